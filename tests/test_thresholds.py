"""Refusal thresholds: per language, from the model's calibration unless set."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.bootstrap import build_service
from kbqa.embeddings import EMBEDDED_PROFILES, ModelProfile
from kbqa.service import KBQAService
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
    assert refused.refused and "阈值 0.990" in refused.notice


def nile_service(tmp_path: Path, llm: FakeLLM, **retrieval: object) -> KBQAService:
    """A knowledge base holding one Chinese document, about the Nile."""
    doc = tmp_path / "尼罗河.txt"
    doc.write_text("尼罗河向北流，经过埃及。", encoding="utf-8")
    service = build_service(make_settings(tmp_path, **retrieval), embedder=FakeEmbedder(), llm=lambda: llm)
    service.add_files("rivers", [doc])
    return service


def test_a_question_that_finds_nothing_in_documents_of_the_other_language_is_translated_and_searched_again(
        tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Translation: “尼罗河流向哪里？”", "North, through Egypt [1]."])
    service = nile_service(tmp_path, llm)
    assert service.search("rivers", "Where does the Nile flow?", 1)[0].score < 0.2  # no passage as asked
    answer = service.ask("rivers", "Where does the Nile flow?")
    translate_prompt, answer_prompt = llm.prompts
    assert "Translate this question into Chinese" in translate_prompt[-1].content
    assert "Where does the Nile flow?" in translate_prompt[-1].content
    assert not answer.refused and answer.answer == "North, through Egypt [1]."
    assert [s.source for s in answer.sources] == ["尼罗河.txt"]
    assert "Question: Where does the Nile flow?" in answer_prompt[-1].content  # answered in the user's language
    assert answer.query == "尼罗河流向哪里？"
    assert "searched for it in Chinese: “尼罗河流向哪里？”" in answer.notice
    assert "translate" in answer.timings


def test_a_question_is_translated_where_a_passage_found_is_in_the_other_language(tmp_path: Path) -> None:
    # A knowledge base in both languages: the other passages found first must not keep the Chinese one unread.
    # (Named by numbers: a name in words is their title, which the fake embedder's letters would match.)
    for name, text in [("0123.txt", "12345 67890"), ("0456.txt", "24680 13579")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    llm = FakeLLM(replies=["尼罗河流向哪里？", "North [1]."])
    service = nile_service(tmp_path, llm, score_threshold=0.2, score_threshold_zh=0.3)
    service.add_files("rivers", [tmp_path / "0123.txt", tmp_path / "0456.txt"])
    found = service.search("rivers", "Where does the Nile flow?", 3)
    assert {f.source for f in found[:2]} == {"0123.txt", "0456.txt"}  # not Chinese, first, none passing
    assert max(f.score for f in found) < 0.2
    answer = service.ask("rivers", "Where does the Nile flow?")
    assert not answer.refused and [s.source for s in answer.sources] == ["尼罗河.txt"]


def test_a_question_is_translated_where_only_passages_in_its_own_language_were_found(tmp_path: Path) -> None:
    # Chinese documents with a few English passages (a CSV's English rows): an English question finds only
    # those, none relevant enough, yet the answer is in a Chinese document.
    for n, text in enumerate(["Bug: crash 42.", "Typo in API.", "Sync bug 5.", "Lag, crash."]):
        (tmp_path / f"issue{n}.txt").write_text(text, encoding="utf-8")
    llm = FakeLLM(replies=["尼罗河流向哪里？", "North [1]."])
    service = nile_service(tmp_path, llm, score_threshold=0.3, score_threshold_zh=0.3)
    service.add_files("rivers", [tmp_path / f"issue{n}.txt" for n in range(4)])
    found = service.search("rivers", "Where does the Nile flow?", 3)
    assert all(f.source.startswith("issue") for f in found) and max(f.score for f in found) < 0.3
    answer = service.ask("rivers", "Where does the Nile flow?")
    assert not answer.refused and [s.source for s in answer.sources] == ["尼罗河.txt"]
    assert "searched for it in Chinese" in answer.notice
    service.delete_document("rivers", "尼罗河.txt")  # English only now: refused without a translation
    refused = service.ask("rivers", "Where does the Nile flow?")
    assert refused.refused and len(llm.prompts) == 2 and "translate" not in refused.timings


def test_a_few_stray_passages_in_the_other_language_of_a_large_knowledge_base_bring_no_translation(
        tmp_path: Path) -> None:
    log = tmp_path / "log.txt"  # 300 English chunks; with one Chinese one, under 1% of them
    log.write_text("\n\n".join(f"Entry {n}: the pump at station {n} was serviced and its filter replaced."
                                for n in range(700)), encoding="utf-8")
    llm = FakeLLM(replies=["尼罗河流向哪里？", "North [1]."])
    service = nile_service(tmp_path, llm, score_threshold=0.95, score_threshold_zh=0.95)
    service.add_files("rivers", [log])
    assert sum(d.chunks for d in service.list_documents("rivers")) > 300
    refused = service.ask("rivers", "Where does the Nile flow?")
    assert refused.refused and llm.prompts == [] and "translate" not in refused.timings


def test_a_translation_is_held_to_the_stricter_of_the_two_thresholds(tmp_path: Path) -> None:
    # A Chinese question about an English document, translated: the English threshold (0.2) would let the
    # translation through, the Chinese question's own (0.9) does not.
    doc = tmp_path / "nile.txt"
    doc.write_text("The Nile flows north through Egypt.", encoding="utf-8")
    llm = FakeLLM(replies=["Where does the Nile flow?", "made up"])
    service = build_service(make_settings(tmp_path, score_threshold=0.2, score_threshold_zh=0.9),
                            embedder=FakeEmbedder(), llm=lambda: llm)
    service.add_files("rivers", [doc])
    assert service.search("rivers", "Where does the Nile flow?", 1)[0].score > 0.7
    answer = service.ask("rivers", "尼罗河流向哪里？")
    assert answer.refused and len(llm.prompts) == 1
    assert "已译成英文检索：“Where does the Nile flow?”" in answer.notice  # a Chinese question's notice is Chinese
    assert "阈值 0.900" in answer.notice


def test_a_question_refused_among_documents_in_its_own_language_is_not_translated(tmp_path: Path) -> None:
    llm = FakeLLM()
    service = nile_service(tmp_path, llm)
    answer = service.ask("rivers", "木星有多少颗卫星？")
    assert answer.refused and llm.prompts == []  # the model is not even loaded for it
    assert answer.notice.endswith("未询问模型，以拒答句作答。") and "translate" not in answer.timings


def test_translation_can_be_turned_off(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["尼罗河流向哪里？"])
    answer = nile_service(tmp_path, llm, translate=False).ask("rivers", "Where does the Nile flow?")
    assert answer.refused and llm.prompts == []


@pytest.mark.parametrize("reply", [
    "尼罗河向北流。",  # answered instead of translated
    "Where does the 尼罗河 flow?",  # not in the other language
    "尼罗河的3条支流流向哪里？",  # a number the question does not hold
    "",
])
def test_a_reply_that_is_no_translation_is_not_searched_for(tmp_path: Path, reply: str) -> None:
    llm = FakeLLM(replies=[reply, "made up"])
    answer = nile_service(tmp_path, llm).ask("rivers", "Where does the Nile flow?")
    assert answer.refused and len(llm.prompts) == 1
    assert "searched for it" not in answer.notice


def test_a_translation_that_finds_nothing_either_is_refused_and_named(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["木星有多少颗卫星？", "made up"])
    answer = nile_service(tmp_path, llm).ask("rivers", "How many moons does Jupiter have?")
    assert answer.refused and answer.answer == "I cannot answer this from the knowledge base."
    assert len(llm.prompts) == 1
    assert "searched for it in Chinese: “木星有多少颗卫星？” No passage reached the relevance" in answer.notice
    assert answer.notice.endswith("; answered with the refusal sentence.")


def test_a_barely_relevant_passage_in_the_questions_language_does_not_keep_the_other_language_unsearched(
        tmp_path: Path) -> None:
    # Seen in QA: an English question about the Chinese rules passed on one English passage (a PDF's cover page,
    # 0.801 against 0.80), so it was never translated; the model got the cover page and made up "30 days".
    cover = tmp_path / "cover.txt"
    cover.write_text("A paper.", encoding="utf-8")

    def ask(margin: float) -> tuple:
        for folder in ("probe", "kb"):
            (tmp_path / f"{folder}{margin}").mkdir()
        probe = nile_service(tmp_path / f"probe{margin}", FakeLLM())
        probe.add_files("rivers", [cover])
        score = next(f.score for f in probe.search("rivers", "Where does the Nile flow?", 3) if f.source == "cover.txt")
        llm = FakeLLM(replies=["尼罗河流向哪里？", "North [1]."])
        service = nile_service(tmp_path / f"kb{margin}", llm, score_threshold=score - margin, score_threshold_zh=0.3)
        service.add_files("rivers", [cover])
        return service.ask("rivers", "Where does the Nile flow?"), llm

    answer, llm = ask(0.01)  # passes by 0.01: barely relevant
    assert not answer.refused and [s.source for s in answer.sources][0] == "尼罗河.txt"
    assert "cover.txt" in [s.source for s in answer.sources]  # the best of both searches, by score
    assert "also searched for it in Chinese: “尼罗河流向哪里？”" in answer.notice and answer.query == "尼罗河流向哪里？"
    answer, llm = ask(0.1)  # passes clearly: no translation, as before
    assert [s.source for s in answer.sources] == ["cover.txt"] and len(llm.prompts) == 1 and answer.notice == ""
