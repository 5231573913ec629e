"""``kbqa eval``: dataset formats, CMRC/SQuAD-style scoring, retrieval and answer metrics (fake models)."""

from __future__ import annotations

import json
import re
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


def f1_of(common: int, predicted: int, gold: int) -> float:
    """F1 from the tokens in common and the token counts, worked out by hand for the cases below."""
    precision, recall = common / predicted, common / gold
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(("pred", "gold", "em", "f1"), [
    ("3.5亿", "35亿", False, f1_of(1, 2, 2)),  # 3.5|亿 vs 35|亿: '.' is no CMRC punctuation, only 亿 shared
    ("7.2", "72", False, 0.0),  # one token each, different
    ("10%", "10", False, f1_of(1, 2, 1)),  # 10|% vs 10: nltk splits % off, and CMRC keeps it
    ("1998", "1998。", True, 1.0),  # 。 is CMRC punctuation, even after digits
    ("“M-Touch”机", "M-Touch机", True, 1.0),  # “ ” and - removed: mtouch|机 both
    ("4.9。", "4.9", True, 1.0),  # 4.9 stays one token
    ("1998.", "1998", False, f1_of(1, 2, 1)),  # a final '.' is a token of its own
    ("约1,500万", "1,500万", False, f1_of(2, 3, 2)),  # 约|1,500|万 vs 1,500|万
    ("2012 年", "2012年", False, 1.0),  # exact match keeps inner whitespace; the tokens are the same
    ("ＮＢＡ总冠军", "NBA总冠军", False, f1_of(3, 4, 4)),  # no Unicode folding: ｎｂａ is not nba
    ("中国北京", "北京", False, f1_of(2, 4, 2)),
])
def test_chinese_questions_are_scored_as_cmrc2018s_official_script_does(pred: str, gold: str, em: bool,
                                                                         f1: float) -> None:
    assert ev.exact_match(pred, [gold], zh=True) is em
    assert ev.f1_score(pred, [gold], zh=True) == pytest.approx(f1)


@pytest.mark.parametrize(("pred", "gold", "em", "f1"), [
    ("7.2", "72", True, 1.0),  # SQuAD removes all ASCII punctuation
    ("The answer is Joshua Davis", "Joshua Davis", False, f1_of(2, 4, 2)),  # 'the' dropped: answer|is|joshua|davis
    ("new york city", "New York", False, f1_of(2, 3, 2)),
    ("Paris。", "Paris", True, 1.0),  # a CJK full stop after an English answer costs nothing
    ("“iPhone 6”", "iPhone 6", True, 1.0),
    ("york new", "New York", False, 1.0),  # F1 compares bags of words
])
def test_other_questions_are_scored_as_squads_script_does(pred: str, gold: str, em: bool, f1: float) -> None:
    assert ev.exact_match(pred, [gold], zh=False) is em
    assert ev.f1_score(pred, [gold], zh=False) == pytest.approx(f1)


def test_without_the_question_language_the_scorer_is_guessed_from_the_texts() -> None:
    assert ev.f1_score("3.5亿", ["35亿"]) == pytest.approx(0.5)  # Chinese text: CMRC
    assert ev.exact_match("7.2", ["72"])  # no Chinese: SQuAD, which drops '.'
    assert ev.exact_match("1998", ["1998。"]) and ev.f1_score("1998", ["1998。"]) == 1.0


def test_the_best_gold_answer_counts() -> None:
    assert ev.f1_score("物理学奖", ["诺贝尔物理学奖", "物理学奖"], zh=True) == 1.0
    assert ev.exact_match("物理学奖", ["诺贝尔物理学奖", "物理学奖"], zh=True)


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


def test_a_gold_document_in_a_format_kbqa_cannot_read_is_named_as_such(tmp_path: Path, squad: Path) -> None:
    (tmp_path / "thing.xyz").write_text("Mars is red.", encoding="utf-8")
    (tmp_path / "ok.txt").write_text("Mars is red.", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "red", "doc": "thing.xyz"}\n', encoding="utf-8")
    with pytest.raises(ev.KBQAError, match=r"cannot read \(an unsupported format\): \['thing.xyz'\]"):
        ev.load_dataset(tmp_path / "d.jsonl")  # it was "missing", though it is there
    with pytest.raises(ev.KBQAError, match="--docs is for a JSONL dataset's documents"):
        ev.load_dataset(squad, tmp_path)  # ignored before: the run went on without what --docs meant


def test_an_empty_dataset_file_is_called_empty(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_bytes(b"")
    with pytest.raises(ev.KBQAError, match=r"d.json is empty"):  # not "is not JSON (Expecting value...)"
        ev.load_dataset(tmp_path / "d.json")


def test_latency_percentiles_are_rounded() -> None:
    assert ev._percentiles([1.2054372679, 0.5]) == {"p50_ms": 852.7, "p95_ms": 1170.2}


def test_jsonl_mistakes_are_named_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q"\n', encoding="utf-8")
    with pytest.raises(ev.KBQAError, match="line 2 is not JSON"):
        ev.load_dataset(tmp_path / "d.jsonl")


@pytest.mark.parametrize(("data", "message"), [
    ({"data": [{"paragraphs": [{"qas": []}]}]}, "no 'context' field"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"answers": []}]}]}]}, "no 'question' field"),
    ({"data": ["an article as text"]}, "not SQuAD-style"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": ["x"]}]}]}]}, "not SQuAD"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": 7, "answers": []}]}]}]},
     "'question' is a number, not text in article 1, paragraph 1, question 1"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": "北京"}]}]}]},
     "'answers' is text, not a list in article 1, paragraph 1, question 1"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [{"start": 0}]}]}]}]},
     "no 'text' field"),
    ({"data": [{"paragraphs": {"context": "c"}}]}, "'paragraphs' is an object, not a list in article 1"),
    ({"data": []}, "holds no questions"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"question": " ", "answers": []}]}]}]},
     "the question in article 1, paragraph 1, question 1 is blank"),
])
def test_malformed_squad_files_are_named_errors(tmp_path: Path, data: dict, message: str) -> None:  # type: ignore[type-arg]
    (tmp_path / "d.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ev.KBQAError, match=message):
        ev.load_dataset(tmp_path / "d.json")


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q", "answer": "a", "doc": ["a.txt"]}', "line 1: 'doc' must be text"),
    ('{"question": "q", "answer": 42}', "line 1: 'answer' must be text or a list"),
    ('{"question": 42, "answer": "a"}', "line 1: 'question' must be text"),
    # A missing or non-text answer is an error, so a typo cannot make a question unanswerable
    ('{"question": "q", "answers": "29"}', "line 1: no 'answer' \\(use null for an unanswerable question\\)"),
    ('{"question": "q", "answer": 0}', "line 1: 'answer' must be text or a list of texts"),
    ('{"question": "q", "answer": false}', "line 1: 'answer' must be text or a list of texts"),
    ('{"question": "q", "answer": {}}', "line 1: 'answer' must be text or a list of texts"),
    ('{"question": "q", "answer": ["29", 29]}', "line 1: 'answer' must be text or a list of texts"),
    ('["q", "a"]', "line 1 is a list, not an object"),
    ('{"question": "   ", "answer": "a"}', "line 1: the 'question' is blank"),  # before the documents are read
    ('{"question": "", "answer": "a"}', "line 1: the 'question' is blank"),  # it is there: not "no 'question'"
    ('{"question": [], "answer": "a"}', "line 1: 'question' must be text"),
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


def test_a_dataset_folders_readme_is_no_document_unless_given_as_the_documents_folder(tmp_path: Path) -> None:
    for name in ("doc.txt", "README.md"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "x", "doc": "doc.txt"}\n', encoding="utf-8")
    assert [p.name for p in ev.load_dataset(tmp_path / "d.jsonl").files] == ["doc.txt"]
    assert [p.name for p in ev.load_dataset(tmp_path / "d.jsonl", tmp_path).files] == ["README.md", "doc.txt"]
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "x", "doc": "README.md"}\n', encoding="utf-8")
    assert [p.name for p in ev.load_dataset(tmp_path / "d.jsonl").files] == ["README.md", "doc.txt"]


def test_squad_errors_name_the_article_and_paragraph_counting_from_one(tmp_path: Path) -> None:
    good = {"context": "北京是首都。", "qas": [{"question": "首都？", "answers": [{"text": "北京"}]}]}
    data = {"data": [{"paragraphs": [good, good]}, {"paragraphs": [good]}, {"paragraphs": [{"qas": []}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ev.KBQAError, match="no 'context' field in article 3, paragraph 1\\)"):
        ev.load_dataset(tmp_path / "d.json")


def test_identical_squad_contexts_are_one_document_gold_for_all_their_questions(tmp_path: Path) -> None:
    context = "北京是中华人民共和国的首都，位于华北平原北部。"
    data = {"data": [{"paragraphs": [
        {"context": context, "qas": [{"question": "首都是哪里？", "answers": [{"text": "北京"}]}]},
        {"context": "上海位于长江入海口。", "qas": [{"question": "上海在哪？", "answers": [{"text": "长江入海口"}]}]},
        {"context": context, "qas": [{"question": "北京位于哪个平原？", "answers": [{"text": "华北平原"}]}]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    loaded = ev.load_dataset(tmp_path / "d.json")
    assert [text for _, text in loaded.texts] == [context, "上海位于长江入海口。"]
    first = loaded.texts[0][0]
    assert loaded.items[0].doc == first and loaded.items[2].doc == first
    assert loaded.items[1].doc == loaded.texts[1][0]


def test_blank_squad_contexts_make_no_document_and_their_questions_no_gold_document(tmp_path: Path) -> None:
    data = {"data": [{"paragraphs": [
        {"context": "北京是首都。", "qas": [{"question": "首都？", "answers": [{"text": "北京"}]}]},
        {"context": " \n ", "qas": [{"question": "什么？", "answers": [{"text": "北京"}]}]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    loaded = ev.load_dataset(tmp_path / "d.json")
    assert len(loaded.texts) == 1
    assert loaded.items[1].answers == ("北京",) and loaded.items[1].doc is None


@pytest.mark.parametrize(("flag", "impossible"), [(True, True), ("true", True), ("True", True), (False, False),
                                                  ("false", False), ("False", False), (None, False)])
def test_only_a_true_is_impossible_marks_a_squad_question_unanswerable(tmp_path: Path, flag: object,
                                                                       impossible: bool) -> None:
    qa = {"question": "首都？", "answers": [{"text": "北京"}], "is_impossible": flag}
    data = {"data": [{"paragraphs": [{"context": "北京是首都。", "qas": [qa]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert ev.load_dataset(tmp_path / "d.json").items[0].answerable is not impossible


def test_datasets_may_start_with_a_byte_order_mark_and_jsonl_suffix_case_does_not_matter(
        tmp_path: Path, squad: Path) -> None:
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + squad.read_bytes())
    assert len(ev.load_dataset(tmp_path / "bom.json").items) == 4
    (tmp_path / "doc.txt").write_text("x", encoding="utf-8")
    line = '{"question": "问题？", "answer": "x", "doc": "doc.txt"}\n'
    (tmp_path / "QA.JSONL").write_bytes(b"\xef\xbb\xbf" + line.encode("utf-8"))
    assert ev.load_dataset(tmp_path / "QA.JSONL").items[0].question == "问题？"


def test_a_folder_as_dataset_is_refused_with_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ev.KBQAError, match="is a folder: --dataset needs a dataset file"):
        ev.load_dataset(tmp_path)


@pytest.mark.parametrize("answer", ["null", '""', "[]", '"  "'])
def test_jsonl_null_empty_or_blank_answer_marks_a_question_unanswerable(tmp_path: Path, answer: str) -> None:
    (tmp_path / "doc.txt").write_text("x", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(f'{{"question": "q", "answer": {answer}, "doc": "doc.txt"}}\n',
                                      encoding="utf-8")
    assert not ev.load_dataset(tmp_path / "d.jsonl").items[0].answerable


def test_jsonl_answer_lists_keep_each_text_once(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("x", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": ["29", "twenty-nine", "29", ""]}\n',
                                      encoding="utf-8")
    assert ev.load_dataset(tmp_path / "d.jsonl").items[0].answers == ("29", "twenty-nine")


@pytest.fixture
def fake_service(tmp_path: Path) -> ev.KBQAService:
    return build_service(make_settings(tmp_path, score_threshold=-1.0, score_threshold_zh=-1.0),
                         embedder=FakeEmbedder(), llm=lambda: FakeLLM(replies=["7.2", "7.2"]))


def test_retrieval_figures_are_none_without_answerable_questions(fake_service: ev.KBQAService) -> None:
    result = ev.evaluate_retrieval(fake_service, "eval", [ev.EvalItem("q?", (), None)])
    assert result["answerable"] == 0
    assert all(result[key] is None for key in ("hit@1", "hit@3", "hit@5", "mrr@10"))
    assert "hit@1                        -" in ev.format_table(result).splitlines()


def test_the_question_language_picks_the_scorer(tmp_path: Path, fake_service: ev.KBQAService) -> None:
    data = {"data": [{"paragraphs": [{"context": "速度为72公里。The speed is 72 km.", "qas": [
        {"id": "zh", "question": "速度是多少公里？", "answers": [{"text": "72"}]},
        {"id": "en", "question": "What is the speed?", "answers": [{"text": "72"}]}]}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    loaded = ev.load_dataset(tmp_path / "d.json")
    ev.build_knowledge_base(fake_service, loaded, "eval")
    answers = ev.evaluate_answers(fake_service, "eval", loaded.items)
    assert [row["answer"] for row in answers["answers"]] == ["7.2", "7.2"]
    # CMRC keeps '.', so '7.2' is not '72' for the Chinese question; SQuAD drops it for the English one
    assert answers["exact_match"] == 0.5 and answers["f1"] == 0.5
    assert answers["answerable_questions"] == 2 and answers["unanswerable_questions"] == 0


def test_a_dataset_document_that_fails_to_ingest_is_named_as_the_user_knows_it(
        tmp_path: Path, fake_service: ev.KBQAService) -> None:
    squad_like = ev.EvalDataset("d", [ev.EvalItem("q", ("a",), None)], texts=[("context-00001.txt", "")],
                                labels={"context-00001.txt": "the context of article 2, paragraph 3"})
    with pytest.raises(ev.KBQAError) as caught:
        ev.build_knowledge_base(fake_service, squad_like, "eval")
    message = str(caught.value)
    assert "the context of article 2, paragraph 3 is empty" in message
    assert "context-00001" not in message and "upload" not in message and "Fix or remove it" in message
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ev.KBQAError, match=f"{re.escape(str(docs / 'empty.txt'))} is empty") as caught:
        ev.build_knowledge_base(fake_service, ev.EvalDataset("d", [], files=[docs / "empty.txt"]), "eval2")
    assert "upload" not in str(caught.value)


def test_table_prints_seconds_to_the_tenth_and_shares_to_three_places() -> None:
    table = ev.format_table({"ingest_seconds": 17.4, "hit@1": 0.5, "f1": None}).splitlines()
    assert table == [f"{'ingest_seconds':<28} 17.4", f"{'hit@1':<28} 0.500", f"{'f1':<28} -"]


@pytest.mark.parametrize(("spec", "shown"), [
    ("embedded:multilingual-e5-small#int8", "embedded:multilingual-e5-small (int8 chunks)"),
    ("embedded:multilingual-e5-small", "embedded:multilingual-e5-small"),
])
def test_embedding_is_shown_with_its_chunk_encoder_when_quantized(spec: str, shown: str) -> None:
    assert ev.embedding_label(spec) == shown


def test_cli_eval_shows_the_int8_encoder_rounded_seconds_and_answerable_questions(
        tmp_path: Path, squad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kbqa import bootstrap, cli

    def fake_build(settings: object) -> ev.KBQAService:
        return build_service(make_settings(tmp_path, score_threshold=-1.0, score_threshold_zh=-1.0),
                             embedder=FakeEmbedder(name="embedded:multilingual-e5-small#int8"),
                             llm=lambda: FakeLLM(replies=["长江", "六千三百公里", "Mediterranean", "no"]))

    monkeypatch.setattr(bootstrap, "build_service", fake_build)
    assert cli.main(["eval", "--dataset", str(squad)]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert rows["embedding"] == "embedded:multilingual-e5-small (int8 chunks)"
    assert re.fullmatch(r"\d+\.\d", rows["ingest_seconds"])
    assert rows["answerable_questions"] == "3" and rows["documents"] == "2"


def test_cli_eval_logs_its_progress_in_tenths_where_stderr_is_no_terminal(
        tmp_path: Path, squad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kbqa import bootstrap, cli

    monkeypatch.setattr(bootstrap, "build_service", lambda settings: build_service(
        make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: FakeLLM(replies=["长江"] * 8)))
    assert cli.main(["eval", "--dataset", str(squad)]) == 0
    err = capsys.readouterr().err.splitlines()  # pytest's capture is no terminal, as a CI log is not
    for stage in ("ingest", "retrieval", "answers"):
        steps = [line for line in err if line.startswith(stage)]
        assert steps and steps[-1].split(": ")[1].startswith("100%"), err
        assert len(steps) <= 11


def test_cli_eval_loads_the_llm_before_the_ingest_unless_retrieval_only(
        tmp_path: Path, squad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A model setting that could not load failed after the whole ingest and retrieval (minutes on CMRC2018),
    # and the retrieval figures already computed were lost.
    from kbqa import bootstrap, cli
    from kbqa.errors import ModelUnavailable

    def no_llm() -> FakeLLM:
        raise ModelUnavailable("llm.model (KBQA_LLM__MODEL) = '/nope' is neither an existing path nor a hub id")

    embedder = FakeEmbedder()
    monkeypatch.setattr(bootstrap, "build_service", lambda settings: build_service(
        make_settings(tmp_path), embedder=embedder, llm=no_llm))
    assert cli.main(["eval", "--dataset", str(squad)]) == 1
    assert "error: llm.model (KBQA_LLM__MODEL)" in capsys.readouterr().err
    assert embedder.calls == []  # nothing was ingested
    assert cli.main(["eval", "--dataset", str(squad), "--retrieval-only"]) == 0  # needs no LLM



def test_cli_eval_json_shows_what_each_question_retrieved(
        tmp_path: Path, squad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # --retrieval-only --json gave the figures only: a question that missed could not be looked into.
    from kbqa import bootstrap, cli

    monkeypatch.setattr(bootstrap, "build_service", lambda settings: build_service(
        make_settings(tmp_path, score_threshold=-1.0, score_threshold_zh=-1.0), embedder=FakeEmbedder(),
        llm=lambda: FakeLLM()))
    assert cli.main(["eval", "--dataset", str(squad), "--retrieval-only", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in result["retrieved"]}
    assert set(rows) == {"q1", "q2", "q3"}  # the answerable questions, each once
    ranks = [r["hit_rank"] for r in rows.values()]
    assert result["hit@1"] == sum(r == 1 for r in ranks) / 3
    assert result["mrr@10"] == pytest.approx(sum(1 / r for r in ranks if r) / 3)
    for row in rows.values():
        assert 1 <= len(row["top"]) <= 5 and {"source", "chunk", "score"} <= set(row["top"][0])
    assert "answers" not in result
    assert cli.main(["eval", "--dataset", str(squad), "--retrieval-only"]) == 0
    assert "retrieved" not in capsys.readouterr().out  # the table gives the figures only
