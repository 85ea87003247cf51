"""Compressor plugins: `[F, N, C]` tokens -> at most `tokens` per frame."""
