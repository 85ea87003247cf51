"""Vision-encoder plugins: frames -> `[F, N, C]` patch tokens."""
