"""Triton kernels for the compressors, each with a PyTorch reference, an autograd wrapper and a dispatcher.

- :mod:`.pool`: adaptive average pooling of a tokens-last grid (forward and backward kernels).
- :mod:`.tome`: ToMe bipartite matching (fused cosine max/argmax) and size-weighted merging
  (CSR scatter-mean); :mod:`.ties` makes ties between identical tokens exact.
- :mod:`.prune`: Gumbel top-k selection and gather, fused (radix select, no sort).
- :mod:`.bench`: ``dynvlm bench kernels``; :mod:`.gpu_check`: the compiled kernels against the
  torch paths on a CUDA device (``python -m dynvlm.kernels.gpu_check``).

Every dispatcher takes ``backend: "auto" | "triton" | "torch"`` and decides at call time
(:func:`._backend.resolve_backend`); importing these modules needs neither a GPU nor Triton.
"""
