"""``python -m dynvlm`` is the ``dynvlm`` command."""

from dynvlm.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
