"""kbqa: local knowledge-base question answering with cited sources."""

__version__ = "0.1.0"
