"""Refusal thresholds: per language, from the model's calibration unless set."""

from __future__ import annotations

from pathlib import Path

from kbqa.bootstrap import build_service
from kbqa.embeddings import EMBEDDED_PROFILES, ModelProfile
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import make_settings


def test_chinese_questions_get_their_own_threshold() -> None:
    e5 = EMBEDDED_PROFILES["multilingual-e5-small"]
    assert e5.threshold(chinese=True) > e5.threshold(chinese=False)
    assert ModelProfile(score_threshold=0.3).threshold(chinese=True) == 0.3


def test_model_default_is_used_unless_a_setting_overrides_it(tmp_path: Path) -> None:
    fake = FakeEmbedder()
    fake.profile = ModelProfile(score_threshold=0.4, score_threshold_zh=0.7)
    unset = make_settings(tmp_path, score_threshold=None, score_threshold_zh=None)
    service = build_service(unset, embedder=fake, llm=lambda: FakeLLM())
    assert service.qa.threshold("What is it?") == 0.4
    assert service.qa.threshold("这是什么？") == 0.7
    only_en = make_settings(tmp_path, score_threshold=0.1, score_threshold_zh=None)
    service = build_service(only_en, embedder=fake, llm=lambda: FakeLLM())
    assert service.qa.threshold("这是什么？") == 0.1
