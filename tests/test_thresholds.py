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


def test_a_chinese_question_is_held_to_the_lower_threshold_against_a_passage_in_another_language(
        tmp_path: Path) -> None:
    fake = FakeEmbedder()
    fake.profile = ModelProfile(score_threshold=0.4, score_threshold_zh=0.7)
    service = build_service(make_settings(tmp_path, score_threshold=None, score_threshold_zh=None), embedder=fake,
                            llm=lambda: FakeLLM())
    assert service.qa.threshold("尼罗河流向哪里？", "The Nile flows north.") == 0.4
    assert service.qa.threshold("尼罗河流向哪里？", "尼罗河向北流。") == 0.7
    assert service.qa.threshold("Where does the Nile flow?", "尼罗河向北流。") == 0.4  # never raised
    assert service.qa.threshold("尼罗河流向哪里？") == 0.7


def test_a_chinese_question_about_an_english_document_is_answered_not_refused(tmp_path: Path) -> None:
    # A translation pair scores below a same-language match: the Chinese threshold refused every such question.
    doc = tmp_path / "nile.txt"
    doc.write_text("The Nile flows north.", encoding="utf-8")
    zh_doc = tmp_path / "长江.txt"
    zh_doc.write_text("长江向东流入东海。", encoding="utf-8")
    llm = FakeLLM(replies=["尼罗河向北流 [1]。"])
    service = build_service(make_settings(tmp_path, score_threshold=0.0, score_threshold_zh=0.99),
                            embedder=FakeEmbedder(), llm=lambda: llm)
    service.add_files("mixed", [doc, zh_doc])
    answer = service.ask("mixed", "尼罗河流向哪里？")
    assert not answer.refused and answer.answer == "尼罗河向北流 [1]。"
    assert [s.source for s in answer.sources] == ["nile.txt"]  # the Chinese passage missed its own 0.99
    service.delete_document("mixed", "nile.txt")
    refused = service.ask("mixed", "尼罗河流向哪里？")
    assert refused.refused and "threshold 0.990" in refused.notice
