"""Generic helpers with one home each, below every other layer (they import nothing of dynvlm).

- :mod:`.tables`: plain-text and markdown tables, CSV rows read and written atomically.
- :mod:`.configs`: a config tree as a plain dict.
- :mod:`.paths`: a run's folder, its checkpoints and its test file; printing paths.
- :mod:`.memory`: peak memory of a call (CUDA or the process's VmHWM).
- :mod:`.timing`: wall time per named submodule through forward hooks.
"""
