"""``python app.py``: the web app on the settings in ./kbqa.toml (embedded models by default)."""

import logging

from kbqa.settings import load_settings
from kbqa.ui.app import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(load_settings())
