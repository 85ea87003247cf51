"""The ``lightning`` console script dynvlm installs.

``lightning run <file>.yaml [key=value ...]`` is ``dynvlm run <file>.yaml [key=value ...]``.
Every other ``lightning ...`` command belongs to another Lightning package (e.g.
``lightning run model script.py`` is Lightning Fabric's): it is handed to the ``lightning``
console script of whichever other installed distribution declares one, or fails with a
message that names dynvlm.

The pytorch-lightning package installs no ``lightning`` script. If a package that does (such
as ``lightning``) is installed *after* dynvlm, pip overwrites this script with that one and
``dynvlm run`` remains the way to run configs.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Sequence

OWN_DISTRIBUTION = "dynvlm"
YAML_SUFFIXES = (".yaml", ".yml")


def is_dynvlm_command(argv: Sequence[str]) -> bool:
    """True for ``run <file>.yaml ...``: the one form dynvlm handles."""
    return len(argv) >= 2 and argv[0] == "run" and argv[1].lower().endswith(YAML_SUFFIXES)


def other_lightning_entry_points() -> list[md.EntryPoint]:
    """``lightning`` console scripts declared by installed distributions other than dynvlm."""
    found = []
    for ep in md.entry_points(group="console_scripts", name="lightning"):
        dist = ep.dist.name if ep.dist is not None else ""
        if dist.lower() != OWN_DISTRIBUTION:
            found.append(ep)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if is_dynvlm_command(argv):
        from dynvlm.cli.main import main as dynvlm_main

        return dynvlm_main(["run", *argv[1:]])
    for ep in other_lightning_entry_points():
        try:
            handler = ep.load()
        except Exception as exc:  # noqa: BLE001 - try the next provider, then report
            print(f"lightning: could not load the `lightning` command of {ep.dist.name if ep.dist else '?'}: {exc}", file=sys.stderr)
            continue
        sys.argv = ["lightning", *argv]
        result = handler()
        return result if isinstance(result, int) else 0
    shown = " ".join(argv) or "(no arguments)"
    print(
        f"lightning: `lightning {shown}` is not a dynvlm command.\n"
        "This `lightning` script was installed by dynvlm and handles only "
        "`lightning run <config>.yaml [key=value ...]` (the same as `dynvlm run <config>.yaml`).\n"
        "No other installed Lightning package provides a `lightning` command to hand this to; "
        "install one (e.g. `pip install lightning`, which then takes over the `lightning` name) "
        "or use `dynvlm --help`.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
