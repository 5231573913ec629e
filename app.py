"""``python app.py``: the web app on the settings in ./kbqa.toml (embedded models by default)."""

import logging
import sys

from kbqa.errors import KBQAError
from kbqa.settings import load_settings
from kbqa.ui.app import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(load_settings())
    except KBQAError as exc:  # settings or an address a user can fix: one line, as the CLI prints it
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
