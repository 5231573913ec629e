"""``python -m kbqa`` runs the same command line as ``kbqa``."""

import sys

from kbqa.cli import main

sys.exit(main())
