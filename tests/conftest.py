"""Shared fixtures: the third-party corpus beside the checkout, and environment hygiene."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Real third-party documents and datasets (see ../shared/corpus/README.md); never copied here.
CORPUS = ROOT.parent / "shared" / "corpus"

# No test may reach a model hub or send analytics.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus folder; its absence is a broken checkout, not a skip."""
    assert CORPUS.is_dir(), f"../shared/corpus not found at {CORPUS}"
    return CORPUS
