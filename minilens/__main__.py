"""``python -m minilens ...`` is the ``minilens`` command (see minilens/cli.py)."""

import sys

from .cli import main

sys.exit(main())
