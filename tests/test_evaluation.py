"""``kbqa eval``: dataset formats, CMRC/SQuAD-style scoring, retrieval and answer metrics (fake models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.errors import KBQAError
from kbqa.schema import SourceChunk
from tests.fakes import FakeEmbedder, FakeLLM
from tests.test_service import make_settings

SQUAD = {"data": [
    {"title": "a", "paragraphs": [{
        "context": "长江是亚洲最长的河流，全长约六千三百公里。", "qas": [
        {"id": "q1", "question": "亚洲最长的河流是哪条？", "answers": [{"text": "长江", "answer_start": 0}]},
        {"id": "q2", "question": "长江全长约多少公里？",
         "answers": [{"text": "六千三百公里"}, {"text": "六千三百公里"}]}]}]},
    {"title": "b", "paragraphs": [{"context": "The Nile flows north through Egypt into the Mediterranean.", "qas": [
        {"id": "q3", "question": "Where does the Nile flow into?", "answers": [{"text": "the Mediterranean"}]},
        {"id": "q4", "question": "Who painted the Mona Lisa?", "answers": [], "is_impossible": True}]}]},
]}


@pytest.fixture
def squad(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")
    return path


def test_squad_contexts_become_documents_and_duplicate_answers_collapse(squad: Path) -> None:
    data = ev.load_dataset(squad)
    assert len(data.texts) == 2 and len(data.items) == 4
    assert data.items[1].answers == ("六千三百公里",)
    assert data.items[0].doc == data.texts[0][0]
    assert not data.items[3].answerable and data.items[3].doc is None


def test_jsonl_needs_its_gold_documents(tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text('{"question": "q?", "answer": "a", "doc": "missing.txt"}\n', encoding="utf-8")
    with pytest.raises(KBQAError, match="missing.txt"):
        ev.load_dataset(tmp_path / "qa.jsonl")


def test_jsonl_null_answer_is_unanswerable(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("text", encoding="utf-8")
    (tmp_path / "qa.jsonl").write_text('{"question": "a?", "answer": "x", "doc": "d.txt"}\n'
                                       '{"question": "b?", "answer": null, "doc": null}\n', encoding="utf-8")
    data = ev.load_dataset(tmp_path / "qa.jsonl")
    assert [i.answerable for i in data.items] == [True, False]
    assert data.files == [tmp_path / "d.txt"]


def test_fixed_sample_is_reproducible() -> None:
    items = [ev.EvalItem(str(i), ("a",), None) for i in range(100)]
    assert ev.sample(items, 10) == ev.sample(items, 10)
    assert len(ev.sample(items, 10)) == 10 and ev.sample(items, None) == items


@pytest.mark.parametrize(("pred", "gold", "f1"), [
    ("长江", "长江", 1.0),
    ("答案是长江。", "长江", 2 * (2 / 5) * 1 / (2 / 5 + 1)),  # 5 characters once 。 is dropped; 2 in common
    ("黄河", "长江", 0.0),
    ("the Mediterranean Sea", "Mediterranean", 2 * 0.5 * 1 / 1.5),  # articles dropped
])
def test_f1_follows_cmrc_and_squad_conventions(pred: str, gold: str, f1: float) -> None:
    assert ev.f1_score(pred, [gold]) == pytest.approx(f1)


def test_exact_match_ignores_punctuation_case_and_articles() -> None:
    assert ev.exact_match("长江。", ["长江"])
    assert ev.exact_match("The Mediterranean!", ["mediterranean"])
    assert not ev.exact_match("长江流域", ["长江"])


def test_hit_is_gold_context_or_answer_text_ignoring_spaces() -> None:
    item = ev.EvalItem("q", ("4,000 万千米",), "ctx.txt")
    assert ev.is_hit(SourceChunk("ctx.txt", None, 0, 0.1, "unrelated"), item)
    assert ev.is_hit(SourceChunk("other.txt", None, 0, 0.1, "年产4,000万千米金刚线"), item)
    assert not ev.is_hit(SourceChunk("other.txt", None, 0, 0.1, "年产3,000万千米"), item)


def test_retrieval_and_answer_metrics_on_a_tiny_dataset(tmp_path: Path, squad: Path) -> None:
    llm = FakeLLM(replies=["长江", "约六千三百公里", "the Mediterranean",
                           "I cannot answer this from the knowledge base."])
    settings = make_settings(tmp_path, score_threshold=-1.0, score_threshold_zh=-1.0)
    service = build_service(settings, embedder=FakeEmbedder(), llm=lambda: llm)
    data = ev.load_dataset(squad)
    assert ev.build_knowledge_base(service, data, "eval") >= 0
    retrieval = ev.evaluate_retrieval(service, "eval", data.items)
    assert retrieval["answerable"] == 3
    assert retrieval["hit@5"] == 1.0 and 0 < retrieval["mrr@10"] <= 1.0
    answers = ev.evaluate_answers(service, "eval", data.items)
    assert answers["exact_match"] == pytest.approx(2 / 3)
    assert answers["refusal_rate_unanswerable"] == 1.0
    assert answers["refusal_rate_answerable"] == 0.0
    assert "p50_ms" in answers["answer_latency"]
    assert "hit@1" in ev.format_table(retrieval)


def test_jsonl_mistakes_are_named_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q"\n', encoding="utf-8")
    with pytest.raises(ev.KBQAError, match="line 2 is not JSON"):
        ev.load_dataset(tmp_path / "d.jsonl")


@pytest.mark.parametrize(("data", "message"), [
    ({"data": [{"paragraphs": [{"qas": []}]}]}, "no 'context' field"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"answers": []}]}]}]}, "no 'question' field"),
    ({"data": ["an article as text"]}, "not SQuAD-style"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": ["x"]}]}]}]}, "not SQuAD"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": 7, "answers": []}]}]}]}, "'question' is int"),
    ({"data": []}, "holds no questions"),
])
def test_malformed_squad_files_are_named_errors(tmp_path: Path, data: dict, message: str) -> None:  # type: ignore[type-arg]
    (tmp_path / "d.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ev.KBQAError, match=message):
        ev.load_dataset(tmp_path / "d.json")


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q", "answer": "a", "doc": ["a.txt"]}', "line 1: 'doc' must be text"),
    ('{"question": "q", "answer": 42}', "line 1: 'answer' must be text or a list"),
    ('{"question": 42, "answer": "a"}', "line 1: 'question' must be text"),
])
def test_malformed_jsonl_fields_are_named_with_their_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "doc.txt").write_text("x", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ev.KBQAError, match=message):
        ev.load_dataset(tmp_path / "d.jsonl")


def test_jsonl_that_is_not_utf8_or_has_no_documents_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes('{"question": "问题", "answer": "答"}\n'.encode("gbk"))
    with pytest.raises(ev.KBQAError, match="not UTF-8"):
        ev.load_dataset(tmp_path / "d.jsonl")
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(ev.KBQAError, match="holds no documents"):
        ev.load_dataset(tmp_path / "d.jsonl")


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ev.KBQAError, match="at least 1"):
        ev.sample([ev.EvalItem("q", ("a",), None)], limit)


def test_jsonl_documents_are_the_readable_files_of_the_folder(tmp_path: Path) -> None:
    for name in ("doc.txt", "data.json", ".hidden.txt", "notes.md"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "x", "doc": "doc.txt"}\n', encoding="utf-8")
    assert [p.name for p in ev.load_dataset(tmp_path / "d.jsonl").files] == ["doc.txt", "notes.md"]
