"""A quiet console for long runs: progress bars and one line per result on the terminal, everything
the libraries log (and every Python warning) in a log file per run.

What stays on the console: tqdm and Lightning progress bars, what the commands print themselves,
and warnings logged by dynvlm (``dynvlm.*`` loggers, and ``warnings.warn`` from dynvlm's own files).
Lightning's info lines and tips, transformers' load reports and library warnings go to the file.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: library loggers that print to the console on their own (their handlers are set aside while quiet)
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric",
                   "transformers")
#: the folders of dynvlm's own code: a warning raised from one of them stays on the console
_OWN_CODE = tuple(str(Path(__file__).resolve().parents[i]) for i in (1,))


class _OursOnly(logging.Filter):
    """Pass records of dynvlm's loggers, and Python warnings raised from dynvlm's own files."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("dynvlm"):
            return True
        return record.name == "py.warnings" and any(root in record.getMessage() for root in _OWN_CODE)


def _transformers_bars(enabled: bool) -> bool:
    """Turn transformers' progress bars on or off; return whether they were on (``False`` without it)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return False
    was = bool(hf_logging.is_progress_bar_enabled())
    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    return was


@contextmanager
def quiet_console(log_file: Path) -> Iterator[Path]:
    """Send every log record (INFO and up) and warning to ``log_file``; keep only dynvlm's warnings on
    the console (stderr). Restores the logging setup on exit. Yields the log file's path."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.addFilter(_OursOnly())
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    saved = {name: (lg.handlers[:], lg.propagate) for name in LIBRARY_LOGGERS for lg in [logging.getLogger(name)]}
    root_level = root.level
    hf_bars = _transformers_bars(False)  # its weight-loading bar prints a bare newline per model load
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    root.addHandler(file_handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once, into the log
            yield log_file
    finally:
        logging.captureWarnings(False)
        root.removeHandler(file_handler)
        root.removeHandler(console)
        root.setLevel(root_level)
        file_handler.close()
        if hf_bars:
            _transformers_bars(True)
        for name, (handlers, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers = handlers
            lg.propagate = propagate
