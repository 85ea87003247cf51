"""Triton kernels for the compressors, each with a PyTorch reference and a dispatcher."""
