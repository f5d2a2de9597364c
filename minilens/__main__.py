"""``python -m minilens ...`` is the ``minilens`` command (see minilens/show/cli.py)."""

import sys

from .show.cli import main

if __name__ == "__main__":
    sys.exit(main())
