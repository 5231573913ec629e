"""Shared fixtures: the third-party corpus beside the checkout, and environment hygiene."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes import FakeLLM

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


@pytest.fixture
def llm() -> FakeLLM:
    """A scripted LLM that records its prompts."""
    return FakeLLM()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "rivers.txt").write_text(
        "The Yangtze is the longest river in Asia.\n\nThe Nile flows north through Egypt.", encoding="utf-8")
    (folder / "planets.md").write_text(
        "# Planets\n\nJupiter is the largest planet.\n\nMars is called the red planet.", encoding="utf-8")
    (folder / "规则.txt").write_text("第十条 当事人应当在三十日内提出申请。\n第十一条 检察院应当审查。", encoding="gbk")
    return folder
