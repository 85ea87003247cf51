"""Triton kernels for the compressors, each with a PyTorch reference, an autograd wrapper and a dispatcher.

- :mod:`.pool`: adaptive average pooling of a tokens-last grid (forward and backward kernels).
- :mod:`.tome`: ToMe bipartite matching (fused cosine max/argmax) and size-weighted merging
  (CSR scatter-mean); :mod:`.ties` makes ties between identical tokens exact.
- :mod:`.prune`: Gumbel top-k selection and gather, fused (radix select, no sort).
- :mod:`.bench`: ``dynvlm bench kernels``; :mod:`.gpu_check`: the compiled kernels against the
  torch paths on a CUDA device (``python -m dynvlm.kernels.gpu_check``); :mod:`.aot`: every kernel
  variant compiled for sm_80/sm_90 without a GPU (``python -m dynvlm.kernels.aot``).

Every dispatcher takes ``backend: "auto" | "triton" | "torch"`` and decides at call time
(:func:`._backend.resolve_backend`); importing these modules needs neither a GPU nor Triton.
"""

#: the values every dispatcher's ``backend`` argument (and a compressor's ``backend`` key) takes
BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str, op: str) -> str:
    """``backend`` when it is one of :data:`BACKENDS`, else ``ValueError`` naming ``op`` and the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


if __name__ == "kernels":
    # Imported as the top-level package "kernels": the checkout's root came first on sys.path
    # (`python -m ...` or `python -c` from the repository root). That name belongs to Hugging
    # Face's `kernels` distribution, which transformers imports when a model class loads; this
    # folder is only ever `dynvlm.kernels`. Hand the import to the installed package, searched
    # on sys.path without the checkout root, or fail as a missing module would.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _checkout]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None or _spec.loader is None:
        del _sys.modules["kernels"]
        raise ModuleNotFoundError(
            f"No module named 'kernels': {_os.path.dirname(_os.path.abspath(__file__))} is dynvlm.kernels, "
            "never the top-level 'kernels' (pip install kernels for Hugging Face's package)",
            name="kernels",
        )
    _installed = _util.module_from_spec(_spec)
    _sys.modules["kernels"] = _installed
    try:
        _spec.loader.exec_module(_installed)
    except BaseException:
        _sys.modules.pop("kernels", None)
        raise
