"""End to end with the real embedded models (default settings): documents in, cited answers out.

Slow (minutes on 2 cores): the embedding model and the 1.5B chat model run for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbqa.bootstrap import build_service
from kbqa.schema import ChatMessage
from kbqa.service import KBQAService
from kbqa.settings import load_settings
from tests.conftest import CORPUS, ROOT

pytestmark = pytest.mark.real

DATASETS = {"cmrc2018_dev.json", "cmrc2018_dev.cmrc_format.json"}


def corpus_documents() -> list[Path]:
    """Every document of the shared corpus (top level and ocr/), not the datasets or its README."""
    files = [p for p in sorted(CORPUS.iterdir()) if p.is_file() and p.name not in DATASETS | {"README.md"}]
    return files + sorted((CORPUS / "ocr").iterdir())


def ensure_sotu(service: KBQAService) -> None:
    """The State of the Union knowledge base, whichever test runs first."""
    if "sotu" not in {kb.name for kb in service.list_kbs()}:
        assert service.add_files("sotu", [CORPUS / "state_of_the_union.txt"]).ok


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBQAService]:
    root = tmp_path_factory.mktemp("real")
    yield build_service(load_settings(paths={"knowledge_root": root / "knowledge"}))


def test_state_of_the_union_question_cites_the_right_passage(service: KBQAService) -> None:
    report = service.add_files("sotu", [CORPUS / "state_of_the_union.txt"])
    assert report.ok, report.to_dict()
    answer = service.ask("sotu", "How many projects were announced?")
    assert "4,000 projects have already been announced." in answer.sources[0].text
    assert "4,000" in answer.answer or "4000" in answer.answer
    assert not answer.refused


def test_chinese_question_cites_the_article(service: KBQAService) -> None:
    report = service.add_files("检察规则", [CORPUS / "zh_procuratorate_admin_litigation_supervision_rules.md"])
    assert report.ok, report.to_dict()
    answer = service.ask("检察规则", "人民检察院受理当事人申请监督的案件，应当在多长时间内审查终结？")
    assert answer.language == "zh"
    assert "第十二条" in answer.sources[0].text
    assert "三个月" in answer.answer or "3个月" in answer.answer


def test_english_question_about_a_chinese_document_is_translated_and_answered(service: KBQAService) -> None:
    # e5 scores an English question against its Chinese answer below any usable threshold (median 0.757, with
    # unrelated questions up to 0.781): kbqa translates it and searches again (benchmarks/cross_language.py).
    if "检察规则" not in {kb.name for kb in service.list_kbs()}:
        assert service.add_files("检察规则", [CORPUS / "zh_procuratorate_admin_litigation_supervision_rules.md"]).ok
    question = "How long does the procuratorate have to finish reviewing a supervision application it accepted?"
    answer = service.ask("检察规则", question)
    assert not answer.refused, answer.notice
    assert "searched for it in Chinese" in answer.notice
    assert "第十二条" in answer.sources[0].text and "三个月" in answer.sources[0].text
    assert answer.language == "en" and "three months" in answer.answer.lower(), answer.answer


def test_question_outside_the_documents_is_refused(service: KBQAService) -> None:
    ensure_sotu(service)
    answer = service.ask("sotu", "What is the boiling point of liquid nitrogen in Kelvin?")
    assert answer.refused, answer.answer


def test_follow_up_question_is_read_with_the_earlier_turn(service: KBQAService) -> None:
    ensure_sotu(service)
    first = service.ask("sotu", "Where is Intel going to build its semiconductor mega site?")
    history = [ChatMessage("user", first.question), ChatMessage("assistant", first.answer)]
    answer = service.ask("sotu", "How many jobs will it bring?", history)
    assert "Intel" in answer.query or "mega site" in answer.query, answer.query
    assert "10,000 new good-paying jobs" in answer.sources[0].text and not answer.refused
    # What the 1.5B model then writes is measured, not asserted: with a passage on other jobs as third
    # source it answered "8, 000" ("up to eight factories ... 10,000 jobs"; benchmarks/RESULTS.md).
    # Why it is rewritten: alone, the question finds another passage about jobs.
    assert "10,000 new good-paying jobs" not in service.search("sotu", "How many jobs will it bring?", 1)[0].text


def test_same_question_gets_the_same_answer_whatever_was_asked_before(tmp_path: Path) -> None:
    # A borderline question (its best chunk scores just above the threshold; the model decides). With
    # llama.cpp's prompt cache reused, a fresh model refused it and, after another question, answered it
    # from its own knowledge. Its own service, so the first answer comes from an empty cache.
    service = build_service(load_settings(paths={"knowledge_root": tmp_path / "knowledge"}))
    ensure_sotu(service)
    question = "What is the population of Canada?"
    first = service.ask("sotu", question)
    service.ask("sotu", "How many projects were announced?")
    again = service.ask("sotu", question)
    assert (again.answer, again.refused) == (first.answer, first.refused)


def test_cli_ingests_the_whole_corpus_in_one_batch(tmp_path: Path) -> None:
    env = {**os.environ, "KBQA_PATHS__KNOWLEDGE_ROOT": str(tmp_path / "knowledge")}
    files = [str(p) for p in corpus_documents()]
    run = subprocess.run([sys.executable, "-m", "kbqa", "ingest", "--kb", "corpus", *files],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(files)
    assert all(": added (" in line for line in lines), run.stdout
    again = subprocess.run([sys.executable, "-m", "kbqa", "ingest", "--kb", "corpus", *files],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and all(line.endswith("unchanged") for line in again.stdout.splitlines())
    listed = subprocess.run([sys.executable, "-m", "kbqa", "docs", "list", "--kb", "corpus"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert len(listed.stdout.splitlines()) == len(files)
    pdf_line = next(line for line in listed.stdout.splitlines() if line.startswith("en_langchain_llm_apps_primer.pdf"))
    assert "8 pages" in pdf_line


def test_cli_ask_json_has_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "KBQA_PATHS__KNOWLEDGE_ROOT": str(tmp_path / "knowledge")}
    subprocess.run([sys.executable, "-m", "kbqa", "ingest", "--kb", "s", str(CORPUS / "state_of_the_union.txt")],
                   check=True, capture_output=True, env=env, cwd=ROOT, timeout=600)
    out = subprocess.run([sys.executable, "-m", "kbqa", "ask", "--kb", "s", "--json",
                          "How many projects were announced?"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data["answer"], str) and data["sources"]
    first = data["sources"][0]
    assert set(first) == {"source", "page", "chunk", "score", "text"}
    assert first["source"] == "state_of_the_union.txt" and first["page"] is None
    assert isinstance(first["chunk"], int) and isinstance(first["score"], float)


def test_cli_eval_measures_retrieval_on_the_state_of_the_union(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
    out = subprocess.run([sys.executable, "-m", "kbqa", "eval", "--dataset",
                          str(ROOT / "benchmarks/datasets/sotu/sotu_qa.jsonl"), "--docs", str(docs),
                          "--retrieval-only", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["questions"] == 32 and result["answerable"] == 24 and result["documents"] == 1
    assert result["hit@5"] >= 0.9 and 0 < result["mrr@10"] <= 1


def test_llamacpp_reports_usage_and_stops_when_its_stream_is_closed(service: KBQAService) -> None:
    from kbqa.llm.base import GenerationParams, Usage

    llm = service.get_llm()
    messages = [ChatMessage("user", "Count from 1 to 200, one number per line.")]
    usage = Usage()
    reply = "".join(llm.stream(messages, GenerationParams(max_tokens=5), usage))
    assert reply and usage.finish_reason == "length" and usage.completion_tokens == 5
    assert usage.prompt_tokens > llm.count_tokens(messages[0].content)  # the chat template's tokens too
    usage = Usage()
    pieces = llm.stream(messages, GenerationParams(max_tokens=400), usage)
    next(pieces)
    pieces.close()  # a reader that went away: llama.cpp stops instead of writing 400 tokens
    assert usage.completion_tokens < 50
    usage = Usage()
    assert "".join(llm.stream([ChatMessage("user", "Say only: yes")], GenerationParams(max_tokens=50), usage))
    assert usage.finish_reason == "stop" and 0 < usage.completion_tokens < 50
