"""The service end to end with fake models: ingest, dedup, delete, restart, crash safety, answers."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kbqa.bootstrap import build_service
from kbqa.errors import (
    ContextLengthExceeded,
    DocumentNotFound,
    EmptyKnowledgeBase,
    IncompatibleIndex,
    KBQAError,
    ModelUnavailable,
)
from kbqa.knowledge import UNFINISHED
from kbqa.service import KBQAService
from kbqa.settings import Settings, load_settings
from tests.fakes import FakeEmbedder, FakeLLM

ROOT = Path(__file__).resolve().parents[1]


def make_settings(tmp_path: Path, **retrieval: object) -> Settings:
    return load_settings(paths={"knowledge_root": tmp_path / "kb", "cache_dir": tmp_path / "cache",
                                "prompts_dir": ROOT / "prompts"},
                         splitter={"chunk_size": 200, "chunk_overlap": 20},
                         retrieval={"top_k": 3, "score_threshold": 0.2, "score_threshold_zh": 0.2, **retrieval},
                         ingest={"ocr": False})


@pytest.fixture
def make(tmp_path: Path, llm: FakeLLM) -> Callable[..., KBQAService]:
    def build(**retrieval: object) -> KBQAService:
        return build_service(make_settings(tmp_path, **retrieval), embedder=FakeEmbedder(), llm=lambda: llm)
    return build


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_ingest_reports_each_file_and_creates_the_knowledge_base(make: Callable[..., KBQAService],
                                                                docs: Path) -> None:
    service = make()
    report = service.add_files("测试库", files_in(docs))
    assert report.ok
    assert [f.status for f in report.files] == ["added"] * 3
    assert all(f.chunks >= 1 for f in report.files)
    assert [kb.name for kb in service.list_kbs()] == ["测试库"]
    assert {d.name for d in service.list_documents("测试库")} == {"rivers.txt", "planets.md", "规则.txt"}


def test_reingesting_same_file_adds_no_chunks(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    count = service.store.count(service.root.open("kb").slug)
    again = service.add_files("kb", files_in(docs))
    assert [f.status for f in again.files] == ["unchanged"] * 3
    assert again.chunks_added == 0
    assert service.store.count(service.root.open("kb").slug) == count


def test_each_file_is_reported_as_it_settles_in_input_order(make: Callable[..., KBQAService], docs: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI prints a file's line from on_file: a long batch shows each file as it goes, not all at the end.
    import kbqa.ingest

    monkeypatch.setattr(kbqa.ingest, "EMBED_GROUP", 1)  # every file is its own group
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    twin = tmp_path / "twin.md"
    twin.write_bytes((docs / "planets.md").read_bytes())
    bad = tmp_path / "bad.xyz"
    bad.write_text("?", encoding="utf-8")
    told: list[tuple[str, str, int]] = []  # (file, status, embedding calls made when it was told)
    embedder = service.ingestor.embedder
    files = [*files_in(docs), twin, bad]  # planets.md, rivers.txt (unchanged), 规则.txt, its twin, bad
    report = service.add_files("kb", files, on_file=lambda r: told.append((r.name, r.status, len(embedder.calls))))
    assert [(name, status) for name, status, _ in told] == [(f.name, f.status) for f in report.files]
    assert [f.status for f in report.files] == ["added", "unchanged", "added", "unchanged", "failed"]
    calls = {name: n for name, _, n in told}
    assert calls["planets.md"] < calls["规则.txt"]  # told before the next file was embedded


def test_same_content_under_another_name_is_not_indexed_twice(make: Callable[..., KBQAService], docs: Path,
                                                              tmp_path: Path) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    copy = tmp_path / "copy.txt"
    copy.write_bytes((docs / "rivers.txt").read_bytes())
    result = service.add_files("kb", [copy]).files[0]
    assert result.status == "unchanged" and "rivers.txt" in result.reason
    assert "deleting rivers.txt removes it" in result.reason  # it is not listed: say what holds it


def _held(service: KBQAService, kb: str) -> dict[str, str]:
    """Each file of a knowledge base -> the text of its chunks, from the store (not the manifest)."""
    slug = service.root.open(kb).slug
    res = service.store._collection(slug).get(include=["documents", "metadatas"])
    texts: dict[str, str] = {}
    for doc, meta in sorted(zip(res["documents"], res["metadatas"], strict=True), key=lambda d: d[1]["chunk"]):
        texts[meta["source"]] = texts.get(meta["source"], "") + doc
    assert sorted(texts) == sorted(d.name for d in service.list_documents(kb))  # store and manifest agree
    return texts


@pytest.mark.parametrize("new", ["Version two counted 5123 birds.", "   \n"])
def test_an_old_version_kept_under_a_new_name_is_added_as_its_name_gets_the_new_one(
        make: Callable[..., KBQAService], tmp_path: Path, new: str) -> None:
    # report.txt is edited and its old text kept as report_v1.txt: report_v1.txt was "unchanged, same content
    # as report.txt", whose new version then removed that content, so the old text was indexed nowhere.
    service = make()
    report, old = tmp_path / "report.txt", tmp_path / "report_v1.txt"
    report.write_text("Version one counted 4417 birds.", encoding="utf-8")
    service.add_files("kb", [report])
    old.write_bytes(report.read_bytes())
    report.write_text(new, encoding="utf-8")
    results = service.add_files("kb", [report, old]).files
    if new.strip():
        assert [(r.name, r.status) for r in results] == [("report.txt", "updated"), ("report_v1.txt", "added")]
        assert _held(service, "kb") == {"report.txt": new, "report_v1.txt": "Version one counted 4417 birds."}
    else:  # the new version is blank, so refused: report.txt keeps version one, and report_v1.txt is the same
        assert [r.status for r in results] == ["failed", "unchanged"] and "report.txt" in results[1].reason
        assert _held(service, "kb") == {"report.txt": "Version one counted 4417 birds."}


@pytest.mark.parametrize("names", [("a.txt", "b.txt"), ("a.txt", "b.txt", "c.txt")])
def test_files_that_swap_contents_keep_every_content(make: Callable[..., KBQAService], tmp_path: Path,
                                                     names: tuple[str, ...]) -> None:
    # a.txt took b.txt's text and b.txt a.txt's: a.txt was "updated, now the same content as b.txt" (and removed),
    # then b.txt's new version removed that content: one text left, under b.txt.
    service = make()
    texts = [f"Text number {n} is about {w}." for n, w in enumerate(["alpacas", "beetles", "cranes"][:len(names)])]
    paths = [tmp_path / n for n in names]
    for path, text in zip(paths, texts, strict=True):
        path.write_text(text, encoding="utf-8")
    service.add_files("kb", paths)
    for path, text in zip(paths, texts[1:] + texts[:1], strict=True):  # each takes the next one's text
        path.write_text(text, encoding="utf-8")
    results = service.add_files("kb", paths).files
    assert [r.status for r in results] == ["updated"] * len(names)
    assert _held(service, "kb") == dict(zip(names, texts[1:] + texts[:1], strict=True))


def test_changed_file_replaces_its_old_chunks(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    (docs / "rivers.txt").write_text("The Danube flows through Vienna.", encoding="utf-8")
    result = service.add_files("kb", [docs / "rivers.txt"]).files[0]
    assert result.status == "updated"
    slug = service.root.open("kb").slug
    assert service.store.count(slug) == result.chunks
    texts = [t for _, batch in service.store.texts(slug) for t in batch]
    assert not any("Yangtze" in t for t in texts)
    assert service.search("kb", "Yangtze", 3)[0].text.startswith("The Danube")


def test_deleting_a_file_removes_every_chunk_of_it(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    service.delete_document("kb", "planets.md")
    slug = service.root.open("kb").slug
    texts = [t for _, batch in service.store.texts(slug) for t in batch]
    assert texts and not any("Jupiter" in t for t in texts)
    assert all(c.source != "planets.md" for c in service.search("kb", "Jupiter largest planet", 10))
    assert all(c.source != "planets.md" for c in make(mode="bm25").search("kb", "Jupiter", 10))
    with pytest.raises(DocumentNotFound):
        service.delete_document("kb", "planets.md")


def test_top_k_is_filled_past_candidates_the_vector_store_no_longer_holds(make: Callable[..., KBQAService],
                                                                        docs: Path) -> None:
    # The keyword index can name chunks the vector store lacks (e.g. until a stale index is rebuilt): the
    # best-ranked ones are then skipped and the top k filled from further down the ranking.
    (docs / "moons.txt").write_text("\n\n".join(f"Jupiter moon number {i} circles Jupiter far from any river."
                                                for i in range(8)), encoding="utf-8")
    service = make(mode="bm25")
    assert service.add_files("kb", files_in(docs)).ok
    kb = service.root.open("kb")
    assert kb.manifest.files["moons.txt"]["chunks"] >= 3
    service.store.delete_sha(kb.slug, kb.manifest.files["moons.txt"]["sha256"])  # the vector store only
    found = service.search("kb", "Jupiter moon river", 2)
    assert sorted(c.source for c in found) == ["planets.md", "rivers.txt"]


def test_everything_survives_a_restart(make: Callable[..., KBQAService], docs: Path) -> None:
    make().add_files("kb", files_in(docs))
    fresh = make(mode="hybrid")
    assert len(fresh.list_documents("kb")) == 3
    hits = fresh.search("kb", "第十条 三十日", 3)
    assert hits[0].source == "规则.txt"
    assert hits[0].rank == 1


def test_deleting_a_knowledge_base_removes_it(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    service.delete_kb("kb")
    assert service.list_kbs() == []
    service.add_files("kb", [docs / "rivers.txt"])
    assert service.store.count(service.root.open("kb").slug) == service.list_documents("kb")[0].chunks


def test_crash_mid_ingest_leaves_nothing_of_that_file_indexed(make: Callable[..., KBQAService], docs: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    slug = service.root.open("kb").slug
    before = service.store.count(slug)
    real_add = service.keywords.get(service.root.open("kb")).add

    crashes = [OSError("disk full"), OSError("disk full")]  # the batch commit, then the file-by-file retry

    def add_then_crash(ids: list[str], texts: list[str]) -> None:
        real_add(ids, texts)
        if crashes:
            raise crashes.pop()

    monkeypatch.setattr(service.keywords.get(service.root.open("kb")), "add", add_then_crash)
    result = service.add_files("kb", [docs / "planets.md"]).files[0]
    assert result.status == "failed" and "disk full" in result.reason
    monkeypatch.undo()
    assert service.store.count(slug) == before
    assert [d.name for d in service.list_documents("kb")] == ["rivers.txt"]
    assert all(c.source == "rivers.txt" for c in make(mode="bm25").search("kb", "Jupiter planet", 5))


def test_chunks_left_by_a_killed_process_are_removed_on_next_open(make: Callable[..., KBQAService],
                                                                  docs: Path) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    kb = service.root.open("kb")
    # Simulate a process killed after writing chunks but before the manifest named the file.
    from kbqa.schema import Chunk

    orphan = [Chunk(id="dead:0", text="orphan text about Jupiter", source="x.txt", sha256="dead", index=0)]
    kb.manifest.pending = ["dead"]
    kb.save_manifest()
    service.store.add(kb.slug, orphan, FakeEmbedder().embed_documents([orphan[0].text]))
    fresh = make(mode="hybrid")
    assert all(c.id != "dead:0" for c in fresh.search("kb", "orphan Jupiter", 10))
    assert fresh.store.count(kb.slug) == fresh.list_documents("kb")[0].chunks


def test_copies_of_originals_follow_the_manifest_after_a_killed_change(make: Callable[..., KBQAService],
                                                                       tmp_path: Path) -> None:
    service = make()
    doc = tmp_path / "notes.txt"
    doc.write_text("Version one of the notes.", encoding="utf-8")
    service.add_files("kb", [doc])
    kb = service.root.open("kb")
    old = kb.manifest.files["notes.txt"]["sha256"]
    # Killed while updating, before the commit: the new copy is only staged.
    (kb.content_dir / ".notes.txt.partial").write_text("Version two.", encoding="utf-8")
    kb.manifest.pending = [old, "f" * 64]
    kb.save_manifest()
    make().list_documents("kb")
    assert [p.name for p in kb.content_dir.iterdir()] == ["notes.txt"]
    assert (kb.content_dir / "notes.txt").read_text(encoding="utf-8") == "Version one of the notes."
    # Killed after the commit named the new version, before its copy was renamed into place.
    doc.write_text("Version two of the notes.", encoding="utf-8")
    service = make()
    service.add_files("kb", [doc])
    kb = service.root.open("kb")
    os.replace(kb.content_dir / "notes.txt", kb.content_dir / ".notes.txt.partial")
    (kb.content_dir / "notes.txt").write_text("Version one of the notes.", encoding="utf-8")
    kb.manifest.pending = [old]
    kb.save_manifest()
    make().list_documents("kb")
    assert [p.name for p in kb.content_dir.iterdir()] == ["notes.txt"]
    assert (kb.content_dir / "notes.txt").read_text(encoding="utf-8") == "Version two of the notes."
    # Killed while deleting, after the manifest dropped the file: its copy goes too.
    sha = kb.manifest.files.pop("notes.txt")["sha256"]
    kb.manifest.pending = [sha]
    kb.save_manifest()
    assert make().list_documents("kb") == [] and list(kb.content_dir.iterdir()) == []


def test_a_new_knowledge_base_whose_first_batch_was_killed_is_settled_at_the_next_start(
        make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.root.create("empty", first_batch=True)  # killed before any file got in
    half = service.root.root / "half"  # killed while writing kb.json
    half.mkdir()
    (half / UNFINISHED).touch()
    (half / ".kb.json.q1w2e3").write_text('{"na', encoding="utf-8")
    service.add_files("kept", [docs / "rivers.txt"])
    kept = service.root.open("kept")
    (kept.folder / UNFINISHED).touch()  # killed after a file got in, before the batch ended
    (kept.folder / ".manifest.json.x1y2z3").write_text("{", encoding="utf-8")  # a manifest write cut short
    fresh = make()
    assert [kb.name for kb in fresh.list_kbs()] == ["kept"]
    assert not (kept.folder / UNFINISHED).exists() and not (kept.folder / ".manifest.json.x1y2z3").exists()
    assert sorted(p.name for p in fresh.root.root.iterdir() if not p.name.startswith(".")) == ["kept"]
    fresh.create_kb("explicit")  # made on purpose, empty: kept
    assert [kb.name for kb in make().list_kbs()] == ["explicit", "kept"]


def test_a_knowledge_base_whose_creation_was_killed_can_be_created_again(make: Callable[..., KBQAService],
                                                                         docs: Path) -> None:
    service = make()
    folder = service.root.root / "notes"
    folder.mkdir(parents=True)
    (folder / UNFINISHED).touch()
    (folder / ".kb.json.ab12cd").write_text('{"na', encoding="utf-8")  # killed while writing kb.json
    assert service.add_files("notes", [docs / "rivers.txt"]).files[0].status == "added"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_one_bad_file_never_aborts_the_batch(make: Callable[..., KBQAService], docs: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (bad / "passwd").write_text("root:x:0:0", encoding="utf-8")
    (bad / "data.xyz").write_text("what", encoding="utf-8")
    service = make()
    report = service.add_files("kb", [*files_in(bad), *files_in(docs)])
    status = {f.name: f for f in report.files}
    assert not report.ok
    assert {n for n, f in status.items() if f.status == "failed"} == {"empty.txt", "broken.pdf", "passwd", "data.xyz"}
    assert all(status[n].reason for n in ("empty.txt", "broken.pdf", "passwd", "data.xyz"))
    assert {n for n, f in status.items() if f.status == "added"} == {"rivers.txt", "planets.md", "规则.txt"}


def test_path_traversal_upload_name_is_stored_under_its_base_name(make: Callable[..., KBQAService],
                                                                  docs: Path, tmp_path: Path) -> None:
    service = make()
    report = service.add_files("kb", [(docs / "rivers.txt", "../../etc/rivers.txt")])
    assert report.files[0].name == "rivers.txt"
    kb = service.root.open("kb")
    assert (kb.content_dir / "rivers.txt").is_file()
    assert not (tmp_path / "etc").exists()


def test_an_uploaded_file_is_deleted_by_its_name_not_by_some_path(make: Callable[..., KBQAService],
                                                                 docs: Path) -> None:
    service = make()
    service.add_files("kb", [(docs / "rivers.txt", "rivers.txt")])  # an upload: no folder it came from
    with pytest.raises(DocumentNotFound, match=r"was uploaded, not added from /elsewhere/rivers.txt: give its "
                                               r"name \(rivers.txt\)"):
        service.delete_document("kb", "/elsewhere/rivers.txt")
    assert [d.name for d in service.list_documents("kb")] == ["rivers.txt"]
    assert service.delete_document("kb", "rivers.txt") == "rivers.txt"


def test_file_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path, llm: FakeLLM) -> None:
    settings = make_settings(tmp_path).model_copy(update={"ingest": load_settings(ingest={"max_file_mb": 1}).ingest})
    service = build_service(settings, embedder=FakeEmbedder(), llm=lambda: llm)
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:  # a sparse 200 MB file: no disk or time spent
        fh.truncate(200 * 2**20)
    result = service.add_files("kb", [big]).files[0]
    assert result.status == "failed" and "200 MB" in result.reason and "max_file_mb" in result.reason


def test_question_on_an_empty_knowledge_base_is_a_clear_error(make: Callable[..., KBQAService]) -> None:
    service = make()
    service.create_kb("empty")
    with pytest.raises(EmptyKnowledgeBase, match="add files"):
        service.ask("empty", "anything?")


def test_empty_question_is_refused(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    with pytest.raises(KBQAError, match="empty"):
        service.ask("kb", "   ")


def test_answer_carries_sources_in_retrieval_order_and_prompt_holds_them(make: Callable[..., KBQAService],
                                                                         docs: Path, llm: FakeLLM) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["Jupiter [1]."]
    answer = service.ask("kb", "Which is the largest planet?")
    assert answer.answer == "Jupiter [1]."
    assert not answer.refused
    assert answer.sources and answer.sources[0].source == "planets.md"
    assert [s.rank for s in answer.sources] == list(range(1, len(answer.sources) + 1))
    prompt = llm.prompts[-1][-1].content
    assert "Jupiter is the largest planet" in prompt
    assert "Which is the largest planet?" in prompt
    assert prompt.index("[1]") < prompt.index("Jupiter is the largest planet")


def test_chinese_question_gets_the_chinese_template(make: Callable[..., KBQAService], docs: Path,
                                                    llm: FakeLLM) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    answer = service.ask("kb", "第十条规定申请期限是多少日？")
    assert answer.language == "zh"
    assert "已知信息" in llm.prompts[-1][-1].content
    assert answer.sources[0].source == "规则.txt"


def test_no_relevant_chunk_gives_the_refusal_without_calling_the_model(make: Callable[..., KBQAService],
                                                                       docs: Path, llm: FakeLLM) -> None:
    service = make(score_threshold=0.99, score_threshold_zh=0.99)
    service.add_files("kb", [docs / "rivers.txt", docs / "planets.md"])  # in the question's language
    answer = service.ask("kb", "Who won the football world cup?")
    assert answer.refused
    assert answer.answer == "I cannot answer this from the knowledge base."
    assert "threshold 0.990 (best score 0." in answer.notice  # 3 decimals: a near miss never reads as equal
    assert answer.sources == []
    assert llm.prompts == []


def test_a_refusal_does_not_even_load_the_model(tmp_path: Path, docs: Path) -> None:
    def load() -> FakeLLM:
        raise AssertionError("the model was loaded")

    service = build_service(make_settings(tmp_path, score_threshold=0.99, score_threshold_zh=0.99),
                            embedder=FakeEmbedder(), llm=load)
    service.add_files("kb", [docs / "rivers.txt", docs / "planets.md"])  # no translation to try
    assert service.ask("kb", "Who won the football world cup?").refused


def test_model_refusal_is_flagged(make: Callable[..., KBQAService], docs: Path, llm: FakeLLM) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["根据已知信息无法回答该问题。"]
    answer = service.ask("kb", "第十条的申请期限？")
    assert answer.refused and answer.sources


def test_stream_yields_sources_before_tokens(make: Callable[..., KBQAService], docs: Path, llm: FakeLLM) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["The Nile flows north [1]."]
    kinds = [e.kind for e in service.ask_stream("kb", "Which way does the Nile flow?")]
    assert kinds[0] == "sources" and kinds[-1] == "done"
    assert kinds.count("token") == 5


def test_context_is_trimmed_to_the_model_window(tmp_path: Path, docs: Path) -> None:
    small = FakeLLM(context_window=700)
    settings = make_settings(tmp_path, top_k=5)
    service = build_service(settings.model_copy(update={"llm": load_settings(llm={"max_tokens": 100}).llm}),
                            embedder=FakeEmbedder(), llm=lambda: small)
    service.add_files("kb", files_in(docs))
    answer = service.ask("kb", "Yangtze Nile Jupiter Mars river planet")
    assert 1 <= len(answer.sources) < 5
    assert sum(small.count_tokens(m.content) for m in small.prompts[-1]) <= 700 - 100


def small_model_service(tmp_path: Path, docs: Path, llm: FakeLLM, max_tokens: int) -> KBQAService:
    settings = make_settings(tmp_path, top_k=5)
    service = build_service(settings.model_copy(update={"llm": load_settings(llm={"max_tokens": max_tokens}).llm}),
                            embedder=FakeEmbedder(), llm=lambda: llm)
    service.add_files("kb", files_in(docs))
    return service


def test_the_sources_shown_are_the_passages_the_model_was_given(tmp_path: Path, docs: Path) -> None:
    small = FakeLLM(context_window=300)
    service = small_model_service(tmp_path, docs, small, max_tokens=100)
    events = list(service.ask_stream("kb", "Yangtze Nile Jupiter Mars river planet"))
    found, answer = events[0].sources, events[-1].answer
    assert answer is not None and 1 <= len(answer.sources) < len(found)
    prompt = small.prompts[-1][-1].content
    assert all(s.text.strip()[:30] in prompt for s in answer.sources)
    assert found[len(answer.sources)].text.strip()[:30] not in prompt


def test_a_max_tokens_as_large_as_the_context_leaves_the_passages_in_the_prompt(tmp_path: Path, docs: Path) -> None:
    small = FakeLLM(context_window=700, replies=["North [1]."])
    service = small_model_service(tmp_path, docs, small, max_tokens=700)
    answer = service.ask("kb", "Which way does the Nile flow?")
    assert "The Nile flows north" in small.prompts[-1][-1].content and answer.sources
    prompt = sum(small.count_tokens(m.content) for m in small.prompts[-1])
    assert 0 < small.params[-1].max_tokens <= 700 - prompt  # the answer gets the room left


def test_a_question_that_fills_the_context_is_refused_as_too_long(tmp_path: Path, docs: Path) -> None:
    small = FakeLLM(context_window=300)
    service = small_model_service(tmp_path, docs, small, max_tokens=50)
    with pytest.raises(ContextLengthExceeded, match="The question leaves no room for the passages.*shorten it"):
        service.ask("kb", "Which way does the Nile flow? " * 30)
    assert small.prompts == []  # the model was not asked without passages


def test_a_short_question_the_template_leaves_no_room_for_says_what_to_change(tmp_path: Path, docs: Path) -> None:
    # A model with a small context (a tiny checkpoint's 256 positions): the question is not what to shorten.
    small = FakeLLM(context_window=150)
    service = small_model_service(tmp_path, docs, small, max_tokens=20)
    with pytest.raises(ContextLengthExceeded, match=r"The prompt template and the room kept for the answer \(20 "
                                                    r"tokens.*lower max_tokens, raise llm.context_window"):
        service.ask("kb", "Which way does the Nile flow?")
    assert small.prompts == []


def test_knowledge_base_built_with_another_embedder_is_refused(tmp_path: Path, docs: Path, llm: FakeLLM) -> None:
    first = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    first.add_files("kb", [docs / "rivers.txt"])
    other = build_service(make_settings(tmp_path), embedder=FakeEmbedder(name="fake:other"), llm=lambda: llm)
    with pytest.raises(IncompatibleIndex, match="fake:ngrams"):
        other.add_files("kb", [docs / "planets.md"])


def test_the_same_model_folder_written_another_way_is_the_same_embedder(tmp_path: Path, docs: Path, llm: FakeLLM,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A knowledge base recorded the setting as typed: "~/models/e5" (or a relative path, or a link) and the
    # same folder's absolute path were "different models", and adding was refused.
    from kbqa.embeddings import embedder_name
    from kbqa.settings import EmbeddingSettings

    (tmp_path / "models" / "e5").mkdir(parents=True)
    (tmp_path / "e5-link").symlink_to(tmp_path / "models" / "e5")
    monkeypatch.chdir(tmp_path)
    resolved = str(tmp_path.resolve() / "models" / "e5")
    assert embedder_name(EmbeddingSettings(model="models/e5", quantize="none")) == resolved
    first = build_service(make_settings(tmp_path), embedder=FakeEmbedder(name="models/e5"), llm=lambda: llm)
    first.add_files("kb", [docs / "rivers.txt"])  # recorded as typed, as before paths were resolved
    for same in (str(tmp_path / "e5-link"), resolved):
        again = build_service(make_settings(tmp_path), embedder=FakeEmbedder(name=same), llm=lambda: llm)
        assert [r.status for r in again.add_files("kb", [docs / "planets.md"]).files] == ["added"]
        again.delete_document("kb", "planets.md")


def test_quantized_chunks_can_be_searched_with_the_float_setting_but_not_mixed(tmp_path: Path, docs: Path,
                                                                               llm: FakeLLM) -> None:
    first = build_service(make_settings(tmp_path), embedder=FakeEmbedder(name="fake:ngrams#int8"), llm=lambda: llm)
    first.add_files("kb", [docs / "rivers.txt"])
    other = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    assert other.search("kb", "Nile", 1)[0].source == "rivers.txt"
    with pytest.raises(IncompatibleIndex, match="embedding.quantize"):
        other.add_files("kb", [docs / "planets.md"])


def test_questions_to_a_knowledge_base_of_another_embedder_are_refused(tmp_path: Path, docs: Path,
                                                                      llm: FakeLLM) -> None:
    build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm).add_files("kb", files_in(docs))
    other = build_service(make_settings(tmp_path), embedder=FakeEmbedder(name="fake:other"), llm=lambda: llm)
    with pytest.raises(IncompatibleIndex, match="embedding.model back to 'fake:ngrams'"):
        other.ask("kb", "Which river flows north?")
    with pytest.raises(IncompatibleIndex):
        other.search("kb", "Nile", 3)


def test_a_mistyped_embedding_model_is_named_not_blamed_on_the_knowledge_base(tmp_path: Path, docs: Path,
                                                                            llm: FakeLLM) -> None:
    build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm).add_files("kb", files_in(docs))
    typo = make_settings(tmp_path).model_copy(update={"embedding": load_settings(
        embedding={"model": str(tmp_path / "no-such-model")}).embedding})
    other = build_service(typo, llm=lambda: llm)
    for act in (lambda: other.ask("kb", "Which river flows north?"), lambda: other.add_files("kb", [docs / "x.txt"])):
        with pytest.raises(ModelUnavailable, match="neither an existing path") as raised:
            act()
        assert "re-create" not in str(raised.value)


def stored_chunks(service: KBQAService, kb: str) -> list[str]:
    slug = service.root.open(kb).slug
    return [text for _, texts in service.store.texts(slug) for text in texts]


def test_two_files_of_one_name_in_a_batch_leave_no_ghost(make: Callable[..., KBQAService], tmp_path: Path) -> None:
    service = make()
    for sub, word in (("a", "PINEAPPLE"), ("b", "WATERMELON")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "readme.txt").write_text(f"The code word is {word}.", encoding="utf-8")
    report = service.add_files("kb", [tmp_path / "a" / "readme.txt", tmp_path / "b" / "readme.txt",
                                      tmp_path / "a" / "readme.txt"])
    assert [f.status for f in report.files] == ["added", "failed", "unchanged"]
    assert "another file named readme.txt" in report.files[1].reason and "rename" in report.files[1].reason
    assert stored_chunks(service, "kb") == ["The code word is PINEAPPLE."]
    service.delete_document("kb", "readme.txt")
    assert stored_chunks(service, "kb") == []


def same_name_in_two_folders(tmp_path: Path, name: str, first: str, second: str) -> tuple[Path, Path]:
    """``v1/name`` and ``v2/name`` holding the two texts."""
    paths = (tmp_path / "v1" / name, tmp_path / "v2" / name)
    for path, text in zip(paths, (first, second), strict=True):
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
    return paths


def test_an_upload_committed_meanwhile_is_replaced_without_a_ghost(make: Callable[..., KBQAService],
                                                                   tmp_path: Path) -> None:
    service = make()
    old, new = same_name_in_two_folders(tmp_path, "same.txt", "Version one says Monday.", "Version two says Friday.")
    kb = service.root.create("kb")
    ingestor = service.ingestor
    slow = ingestor._prepare(kb, 0, old, "same.txt", {}, {})  # read before the other upload commits ...
    assert service.add_files("kb", [new]).files[0].status == "added"
    vectors = ingestor.embedder.embed_documents([c.text for c in slow.chunks])
    ingestor.commit(kb, [slow], vectors)  # ... and committed after it: the later commit wins, whole
    assert slow.replaces is not None
    assert stored_chunks(service, "kb") == ["Version one says Monday."]
    assert kb.chunk_count == 1


def test_a_file_changed_into_a_copy_of_another_loses_its_old_text(make: Callable[..., KBQAService],
                                                                  tmp_path: Path) -> None:
    service = make()
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text("Version one: the meeting is on Monday.", encoding="utf-8")
    y.write_text("The budget is ten million.", encoding="utf-8")
    service.add_files("kb", [x, y])
    x.write_bytes(y.read_bytes())
    result = service.add_files("kb", [x]).files[0]
    assert result.status == "updated" and "same content as y.txt" in result.reason
    assert stored_chunks(service, "kb") == ["The budget is ten million."]
    assert [d.name for d in service.list_documents("kb")] == ["y.txt"]


def test_a_copy_is_indexed_when_the_earlier_file_with_its_bytes_fails(make: Callable[..., KBQAService],
                                                                     tmp_path: Path) -> None:
    # notes.doc is refused for its format; the same bytes as notes.txt must still get in.
    service = make()
    data = tmp_path / "data"
    data.write_text("Zebra code 4711 opens the gate.", encoding="utf-8")
    report = service.add_files("kb", [(data, "notes.doc"), (data, "../../etc/passwd"), (data, "notes.txt"),
                                      (data, "again.txt")])
    assert [(f.name, f.status) for f in report.files] == [
        ("notes.doc", "failed"), ("passwd", "failed"), ("notes.txt", "added"), ("again.txt", "unchanged")]
    assert "same content as notes.txt" in report.files[3].reason
    assert [d.name for d in service.list_documents("kb")] == ["notes.txt"]
    assert stored_chunks(service, "kb") == ["Zebra code 4711 opens the gate."]


def test_a_format_kbqa_cannot_read_is_refused_even_with_bytes_it_holds(make: Callable[..., KBQAService],
                                                                        tmp_path: Path) -> None:
    service = make()
    data = tmp_path / "notes.txt"
    data.write_text("Zebra code 4711 opens the gate.", encoding="utf-8")
    service.add_files("kb", [data])
    report = service.add_files("kb", [(data, "notes.doc"), (data, "../../etc/passwd")])
    assert [f.status for f in report.files] == ["failed", "failed"]
    assert "save it as .docx" in report.files[0].reason
    assert "passwd: Files without an extension" in report.files[1].reason
    assert [d.name for d in service.list_documents("kb")] == ["notes.txt"]


def test_a_file_changed_into_a_copy_of_another_in_the_same_batch_loses_its_old_text(
        make: Callable[..., KBQAService], tmp_path: Path) -> None:
    service = make()
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text("Version one: the meeting is on Monday.", encoding="utf-8")
    service.add_files("kb", [x])
    y.write_text("The budget is ten million.", encoding="utf-8")
    x.write_bytes(y.read_bytes())
    report = service.add_files("kb", [y, x])
    assert [f.status for f in report.files] == ["added", "updated"]
    assert stored_chunks(service, "kb") == ["The budget is ten million."]
    assert [d.name for d in service.list_documents("kb")] == ["y.txt"]


def test_deleting_a_knowledge_base_during_an_ingest_stops_it_cleanly(make: Callable[..., KBQAService], docs: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    load = service.ingestor.load

    def load_then_delete(path: Path, name: str) -> object:
        if name == "planets.md":
            service.delete_kb("kb")
        return load(path, name)

    service.ingestor.load = load_then_delete  # type: ignore[assignment]
    report = service.add_files("kb", [docs / "planets.md", docs / "规则.txt"])
    assert [f.status for f in report.files] == ["failed", "failed"]
    assert all("deleted while files were being added" in f.reason for f in report.files)
    # A user's deliberate act: no warning, no retry file by file, no traceback per file in the server's log.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert service.list_kbs() == []
    assert [p.name for p in service.root.root.iterdir() if p.is_dir() and p.name != ".chroma"] == []
    service.ingestor.load = load  # type: ignore[assignment]
    assert service.add_files("kb", [docs / "planets.md"]).ok
    chunks = stored_chunks(service, "kb")  # nothing of the deleted knowledge base came back
    assert chunks and not any("Yangtze" in c or "第十条" in c for c in chunks)


def test_searching_an_empty_knowledge_base_says_it_is_empty(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    service.delete_document("kb", "rivers.txt")
    with pytest.raises(EmptyKnowledgeBase, match="no documents yet"):
        service.search("kb", "Yangtze", 3)


def test_a_deletion_cut_short_is_finished_at_the_next_start(make: Callable[..., KBQAService], docs: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    slug = service.root.open("kb").slug

    def crash(slug: str) -> None:
        raise KeyboardInterrupt  # the process dies between renaming the folder and dropping the vectors

    monkeypatch.setattr(service.store, "drop", crash)
    with pytest.raises(KeyboardInterrupt):
        service.delete_kb("kb")
    monkeypatch.undo()
    assert service.list_kbs() == []  # gone at once, not half there
    restarted = make()
    assert restarted.root.buried() == () and restarted.store.count(slug) == 0
    assert [f.status for f in restarted.add_files("kb", files_in(docs)).files] == ["added"] * 3


def test_files_whose_vectors_were_lost_can_be_added_again(make: Callable[..., KBQAService], docs: Path) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    kb = service.root.open("kb")
    entry = kb.manifest.files["rivers.txt"]
    service.store.delete_sha(kb.slug, entry["sha256"])  # e.g. the database was restored from an older copy
    restarted = make()
    assert "rivers.txt" not in [d.name for d in restarted.list_documents("kb")]
    again = restarted.add_files("kb", [docs / "rivers.txt"]).files[0]
    assert again.status == "added" and again.chunks == entry["chunks"]
    assert restarted.search("kb", "Yangtze", 1)[0].source == "rivers.txt"


def test_a_lost_manifest_lists_its_files_again_and_drops_chunks_it_cannot(make: Callable[..., KBQAService],
                                                                          docs: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    service = make(mode="hybrid")
    service.add_files("kb", files_in(docs))
    kb = service.root.open("kb")
    before = {d.name: (d.sha256, d.chunks) for d in service.list_documents("kb")}
    (kb.content_dir / "planets.md").unlink()  # its original is not kept: its chunks cannot be listed again
    (kb.folder / "manifest.json").unlink()  # lost outside kbqa
    restarted = make(mode="hybrid")
    with caplog.at_level("WARNING"):
        after = {d.name: (d.sha256, d.chunks) for d in restarted.list_documents("kb")}
    assert after == {n: v for n, v in before.items() if n != "planets.md"}
    assert "listed again" in caplog.text and "planets.md), were removed: add them again" in caplog.text
    assert restarted.store.count(kb.slug) == sum(c for _, c in after.values())
    # no retriever finds what the list does not hold (the keyword index is read again from the store)
    for mode in ("bm25", "dense", "hybrid"):
        found = make(mode=mode).search("kb", "Mars, the red planet, or a river?", 5)
        assert found and "planets.md" not in {c.source for c in found}
    assert restarted.search("kb", "Yangtze", 1)[0].source == "rivers.txt"
    assert make().add_files("kb", [docs / "planets.md"]).files[0].status == "added"  # and it can be added again
    restarted.delete_document("kb", "rivers.txt")  # a file listed again is deleted like any other
    assert make().search("kb", "Yangtze", 3)[0].source != "rivers.txt"


def test_a_name_near_the_file_system_limit_is_added(make: Callable[..., KBQAService], tmp_path: Path) -> None:
    service = make()
    long = tmp_path / ("L" * 246 + ".txt")  # 250 bytes: its ".NAME.partial" copy would not fit
    long.write_text("The longest name in the batch.", encoding="utf-8")
    result = service.add_files("kb", [long]).files[0]
    assert result.status == "added" and len(result.name.encode()) <= 240


def test_a_file_is_deleted_by_the_name_or_path_it_was_added_with(make: Callable[..., KBQAService],
                                                                  tmp_path: Path) -> None:
    import unicodedata

    service = make()
    nfd = tmp_path / unicodedata.normalize("NFD", "café.txt")  # as macOS spells it on disk
    nfd.write_text("Coffee is served at nine.", encoding="utf-8")
    service.add_files("kb", [nfd])
    service.delete_document("kb", str(nfd))
    assert service.list_documents("kb") == []


def test_a_same_named_file_from_another_folder_says_what_it_replaces(make: Callable[..., KBQAService],
                                                                     tmp_path: Path) -> None:
    service = make()
    first, second = same_name_in_two_folders(tmp_path, "README.md", "Project A builds bridges.",
                                             "Project B plants trees.")
    service.add_files("kb", [first])
    result = service.add_files("kb", [second]).files[0]
    assert result.status == "updated" and f"replaces the README.md added from {first}" in result.reason
    assert "replaces" in result.line()
    second.write_text("Project B plants more trees.", encoding="utf-8")
    assert service.add_files("kb", [second]).files[0].reason == ""  # a new version of the same file: no note


def test_a_big_file_moves_the_progress_bar_while_it_is_embedded(make: Callable[..., KBQAService],
                                                                tmp_path: Path) -> None:
    service = make()
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"Paragraph {n} names the unique token zq{n}x " + "and filler " * (n * 7 % 9)
                                 for n in range(120)), encoding="utf-8")  # lengths out of order
    seen: list[tuple[float, str]] = []
    report = service.add_files("kb", [big], progress=lambda f, m: seen.append((f, m)))
    chunks = report.files[0].chunks
    assert chunks > 64
    steps = [f for f, m in seen if m.startswith("embedding chunks of big.txt: ")]
    assert len(steps) >= chunks // 32 and steps == sorted(steps) and steps[-1] < 1.0
    assert not any("the bar counts all files" in m for _, m in seen)  # one file: the bar is its own
    slug = service.root.open("kb").slug
    for n in (0, 57, 119):  # each chunk got its own vector back after the shortest-first slices
        text = next(c.text for c in service.store.search(slug, service.qa.retriever.embedder.embed_query("x"), 200)
                    if f"zq{n}x " in c.text)
        vector = service.qa.retriever.embedder.embed_documents([f"big\n{text}"])[0]  # read with its title
        hit = service.store.search(slug, vector, 1)[0]
        assert hit.text == text and hit.score > 0.999


def test_the_progress_bar_never_moves_back_over_a_batch(make: Callable[..., KBQAService], tmp_path: Path) -> None:
    files = []
    for n in range(4):  # read ahead of being embedded, in one group
        files.append(tmp_path / f"f{n}.txt")
        files[-1].write_text(f"File {n} says the river is {n} miles long.", encoding="utf-8")
    seen: list[tuple[float, str]] = []
    make().add_files("kb", files, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # read ahead, the files are not done until embedded: the embedding moves the bar, not the reading
    assert {f for f, m in seen if m.startswith("reading")} == {0.0}
    assert [f for f, m in seen if m.startswith("embedding")][-1] == pytest.approx(0.95)
    # The count is the group's chunks, the bar the whole batch's: "32 of 1124 - 51.4%" read as a contradiction.
    assert all(m.endswith("; the bar counts all files") for _, m in seen if m.startswith("embedding"))


def test_a_csv_source_says_which_row_of_the_file_it_is(make: Callable[..., KBQAService], tmp_path: Path) -> None:
    doc = tmp_path / "parts.csv"
    doc.write_text('part,note\nbolt,"fits the\nleft door"\nhinge,squeaks when cold\n', encoding="utf-8")
    service = make()
    service.add_files("parts", [doc])
    [hit] = service.search("parts", "hinge squeaks when cold", 1)
    assert (hit.row, hit.page, hit.location) == (4, None, "row 4")  # the bolt's record spans lines 2-3
    assert hit.to_dict()["row"] == 4 and "row" not in replace(hit, row=None).to_dict()


def test_an_embedding_model_that_cannot_load_is_one_error_for_the_batch(tmp_path: Path, docs: Path,
                                                                         llm: FakeLLM) -> None:
    settings = make_settings(tmp_path)
    settings.embedding.model = "embedded:no-such-model"
    service = build_service(settings, llm=lambda: llm)
    with pytest.raises(KBQAError, match="no-such-model"):
        service.add_files("kb", files_in(docs))
    assert service.list_kbs() == []  # nothing half-made


def test_a_model_that_cannot_load_fails_before_the_answer_starts(tmp_path: Path, docs: Path) -> None:
    def load() -> FakeLLM:
        raise KBQAError("llm.model cannot load")

    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=load)
    service.add_files("kb", files_in(docs))
    events = service.ask_stream("kb", "What is the capital of France?")
    with pytest.raises(KBQAError, match="cannot load"):
        next(events)  # not a sources event followed by an error


def test_the_embedder_and_the_llm_never_load_at_the_same_time(tmp_path: Path, llm: FakeLLM,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The server warms the models up in a thread while a first request may load the LLM: transformers'
    # lazy imports fail when two threads load models at once ("cannot import name ... from 'transformers'").
    import threading
    import time

    import kbqa.bootstrap

    loading: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    def slowly(name: str, model: object) -> object:
        loading.append(name)
        if len(loading) > 1:
            overlaps.append(tuple(loading))
        time.sleep(0.3)
        loading.remove(name)
        return model

    monkeypatch.setattr(kbqa.bootstrap, "build_embedder", lambda *a, **k: slowly("embedder", FakeEmbedder()))
    monkeypatch.setattr(kbqa.bootstrap, "build_llm", lambda *a, **k: slowly("llm", llm))
    service = build_service(make_settings(tmp_path))
    threads = [threading.Thread(target=service.embed, args=(["warm-up"],)), threading.Thread(target=service.get_llm)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and service.get_llm() is llm


def test_a_disk_too_full_to_index_safely_fails_the_files_before_the_database_is_written(
        make: Callable[..., KBQAService], docs: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A write cut short by a full disk can leave Chroma's index unreadable: refuse before writing.
    from collections import namedtuple

    import kbqa.ingest

    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    slug = service.root.open("kb").slug
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(kbqa.ingest.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with caplog.at_level(logging.INFO):
        report = service.add_files("kb", [docs / "planets.md", docs / "规则.txt"])
    # each file's reason says what to do: no warning or traceback besides (the CLI shows warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert [f.status for f in report.files] == ["failed", "failed"]
    assert all("MB free" in f.reason and "free some space" in f.reason for f in report.files)
    assert {d.name for d in service.list_documents("kb")} == {"rivers.txt"}
    assert service.store.count(slug) == service.root.open("kb").manifest.files["rivers.txt"]["chunks"]
    monkeypatch.undo()
    assert service.add_files("kb", [docs / "planets.md"]).ok  # with room again, the same file goes in


def test_an_unreadable_vector_index_is_one_clear_error_and_the_knowledge_base_can_still_be_deleted(
        make: Callable[..., KBQAService], docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What Chroma says when a full disk left a collection's index file empty (seen in QA): no traceback.
    from chromadb.errors import InternalError

    from kbqa.errors import IndexDamaged

    service = make()
    service.add_files("kb", [docs / "rivers.txt"])

    class FakeDamagedCollection:
        def __getattr__(self, name: str) -> object:
            def fail(*args: object, **kwargs: object) -> None:
                raise InternalError("Error executing plan: Error creating hnsw segment reader: Error deserializing "
                                    "pickle file: eval error at offset 0: EOF while parsing")
            return fail

    monkeypatch.setattr(service.store, "_collection", lambda slug: FakeDamagedCollection())
    for use in (lambda: service.list_documents("kb"), lambda: service.ask("kb", "Which river is longest?"),
                lambda: service.search("kb", "Yangtze", 3)):
        with pytest.raises(IndexDamaged, match=r"cannot be read \(EOF while parsing\).*content: copy them .*kb delete"):
            use()
    service.delete_kb("kb")
    assert service.list_kbs() == []


def test_a_damaged_vector_database_is_one_clear_error(make: Callable[..., KBQAService], docs: Path,
                                                     tmp_path: Path) -> None:
    from kbqa.errors import IndexDamaged

    service = make()
    service.add_files("kb", [docs / "rivers.txt"])
    database = service.root.chroma_dir / "chroma.sqlite3"
    with open(database, "r+b") as fh:  # cut short, as a full disk or a copy that broke off leaves it
        fh.truncate(4096)
    with pytest.raises(IndexDamaged, match=r"vector database \(.*\) cannot be read \(.*malformed.*content/ folder"):
        make()


@pytest.mark.parametrize("damaged", ["manifest.json", "kb.json"])
def test_a_knowledge_base_whose_manifest_is_damaged_can_be_deleted_by_name(
        make: Callable[..., KBQAService], docs: Path, damaged: str) -> None:
    # Edited by hand or cut short by disk trouble: it cannot be used, so deleting it is the way out the error
    # gives; the vectors go with it (a new knowledge base of the same name starts empty).
    from kbqa.errors import IndexDamaged

    first = make()
    first.add_files("Manuals", [docs / "rivers.txt"])
    first.add_files("good", [docs / "planets.md"])
    slug = first.root.open("Manuals").slug
    (first.root.open("Manuals").folder / damaged).write_text('{"generation": 3, "fil', encoding="utf-8")
    service = make()  # the next start
    with pytest.raises(IndexDamaged, match="is damaged"):
        service.list_documents("Manuals")
    service.delete_kb("Manuals")
    assert [kb.name for kb in service.list_kbs()] == ["good"] and service.store.count(slug) == 0
    assert not [p for p in service.root.root.iterdir() if slug in p.name]
    assert service.add_files("Manuals", [docs / "planets.md"]).ok
    assert {d.name for d in service.list_documents("Manuals")} == {"planets.md"}


def test_a_damaged_index_in_a_knowledge_base_a_crash_left_unfinished_does_not_stop_the_others(
        make: Callable[..., KBQAService], docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Killed during a new knowledge base's first batch, with the database write cut short: the next start
    # settles unfinished knowledge bases, and that one's index cannot be read.
    from chromadb.errors import InternalError

    from kbqa.store import ChromaStore

    first = make()
    first.add_files("good", [docs / "rivers.txt"])
    first.add_files("bad", [docs / "planets.md"])
    bad = first.root.open("bad")
    (bad.folder / UNFINISHED).touch()
    real = ChromaStore._collection

    def damaged(self: ChromaStore, slug: str) -> object:
        if slug == bad.slug:
            raise InternalError("Error creating hnsw segment reader: EOF while parsing")
        return real(self, slug)

    monkeypatch.setattr(ChromaStore, "_collection", damaged)
    service = make()  # starts
    assert {d.name for d in service.list_documents("good")} == {"rivers.txt"}
    service.delete_kb("bad")
    assert [kb.name for kb in service.list_kbs()] == ["good"]


class FakeBlindEmbedder(FakeEmbedder):
    """One vector for every text: dense retrieval ranks passages in no useful order."""

    def _vector(self, text: str) -> np.ndarray:
        v = np.ones(self.dim, dtype=np.float32)
        return v / np.linalg.norm(v)


def test_a_question_naming_an_identifier_leans_on_keywords(tmp_path: Path, llm: FakeLLM) -> None:
    from kbqa.retrieval import RetrievalConfig, bm25_weight

    cfg = RetrievalConfig()
    for question in ("000-30653", "What is filed under 000-30653?", "CVE-2023-1234", "order 1234567", "长江多长？"):
        assert bm25_weight(question, cfg) == cfg.bm25_weight, question
    for question in ("How many bridges?", "What about the 13-year-old boy?", "In 2021?"):
        assert bm25_weight(question, cfg) == cfg.bm25_weight_en, question
    folder = tmp_path / "docs"
    folder.mkdir()
    for n in range(6):
        (folder / f"note{n}.txt").write_text(f"Note {n} about the quarterly report of the company.", encoding="utf-8")
    (folder / "zz-cover.txt").write_text("Commission file number 000-30653.", encoding="utf-8")
    service = build_service(make_settings(tmp_path, mode="hybrid"), embedder=FakeBlindEmbedder(), llm=lambda: llm)
    service.add_files("kb", sorted(folder.iterdir()))
    assert service.search("kb", "000-30653", 3)[0].source == "zz-cover.txt"


def test_an_answer_with_a_number_the_passages_lack_says_to_check_it(make: Callable[..., KBQAService], docs: Path,
                                                                     llm: FakeLLM) -> None:
    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["The Yangtze, 6,300 km long [1, 2]."]
    answer = service.ask("kb", "Which is the longest river in Asia?")
    assert not answer.refused
    assert answer.notice == ("Check this answer against the sources: 6,300 is in none of the passages it was "
                             "written from.")
    llm.replies = ["The Yangtze [1]."]  # citation marks are no figures
    assert service.ask("kb", "Which is the longest river in Asia?").notice == ""
    llm.replies = ["Yes, 6300 km [1]."]  # a figure the question gave
    assert service.ask("kb", "Is the Yangtze, the longest river in Asia, 6,300 km long?").notice == ""


def test_a_number_an_answer_was_cut_in_is_not_held_against_it(make: Callable[..., KBQAService], docs: Path,
                                                               llm: FakeLLM) -> None:
    # max_tokens ran out in the middle of "6,380" ("6," is not in the passages, but the answer was cut, not wrong);
    # a number before the cut, and any number of an answer the model ended itself, is still checked.
    from dataclasses import replace

    service = make()
    service.add_files("kb", files_in(docs))
    params = replace(service.qa.params, max_tokens=3)
    for reply, notice in (("The Yangtze, 6,380 km long [1].", ""), ("Some 9 rivers, 6,380 km", "9 is in none")):
        llm.replies = [reply]
        events = list(service.qa.stream(service.root.open("kb"), "Which is the longest river in Asia?", params=params))
        assert events[-1].answer is not None and notice in events[-1].answer.notice
        assert bool(notice) == ("Check this answer" in events[-1].answer.notice)
    llm.replies = ["The Yangtze, 6,"]  # whole, as the model wrote it: checked
    assert "6 is in none" in service.ask("kb", "Which is the longest river in Asia?").notice


def test_an_answer_with_a_code_the_passages_lack_says_to_check_it(make: Callable[..., KBQAService], docs: Path,
                                                                   llm: FakeLLM) -> None:
    # A made-up ticker (seen in QA: "GGLG" where the passages give GLXZ) is as wrong as a made-up figure.
    from kbqa.qa import unsupported_codes

    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["The Yangtze, listed as YGTZ [1]."]
    answer = service.ask("kb", "Which is the longest river in Asia?")
    assert answer.notice == ("Check this answer against the sources: YGTZ is in none of the passages it was "
                             "written from.")
    assert unsupported_codes("Trades as GLXZ on NASDAQ; INT4 needs 6 GB.", ["NASDAQ:GLXZ", "INT4 量化"]) == []
    assert unsupported_codes("ChatGLM2-6B and Mars, the SEC and GGLG.", ["ChatGLM2-6B", "Mars"]) == ["SEC", "GGLG"]
    assert unsupported_codes("Ticker GGL", ["GLXZ"], cut=True) == []  # cut off mid-code


def test_figures_are_compared_as_numbers_not_as_spelt() -> None:
    from kbqa.qa import unsupported_numbers

    assert unsupported_numbers("500, 000 stations [1].", ["a network of 500,000 chargers"]) == []
    assert unsupported_numbers("4000 projects", ["4,000 projects have been announced"]) == []
    assert unsupported_numbers("Articles 3, 4 [1, 2]", ["Article 3", "Article 4"]) == []
    assert unsupported_numbers("4,000 + 11,000 = 15,000", ["4,000 jobs", "11,000 jobs"]) == ["15,000"]
    assert unsupported_numbers("6.5 million", ["6.5 million jobs"]) == [] and unsupported_numbers("6.5", ["65"])


@pytest.mark.parametrize(("han", "value"), [
    ("十五", 15), ("二十", 20), ("一千九百五十六", 1956), ("二〇二一", 2021), ("三万", 30000), ("一千零五", 1005),
    ("两百", 200), ("一亿二千万", 120000000)])
def test_numbers_in_chinese_characters_are_read(han: str, value: int) -> None:
    from kbqa.qa import han_number

    assert han_number(han) == value


def test_an_answer_in_digits_from_a_passage_in_chinese_numerals_is_not_flagged() -> None:
    # An English answer to an English question about a Chinese passage (a translated search) writes digits.
    from kbqa.qa import unsupported_numbers

    passage = "人民检察院提出抗诉的，应当在决定之日起十五日内将《抗诉书》连同案件卷宗移送同级人民法院。"
    assert unsupported_numbers("It sends the protest within 15 days [1].", [passage]) == []
    assert unsupported_numbers("Within 16 days [1].", [passage]) == ["16"]


def test_a_notice_has_single_spaces(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["尼罗河流向哪里？", "North, within 15 days [1]."])
    doc = tmp_path / "尼罗河.txt"
    doc.write_text("尼罗河向北流，经过埃及。", encoding="utf-8")
    service = build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=lambda: llm)
    service.add_files("rivers", [doc])
    answer = service.ask("rivers", "Where does the Nile flow?")
    assert "searched for it in Chinese" in answer.notice and "Check this answer" in answer.notice
    assert "  " not in answer.notice


def test_a_chinese_questions_notice_is_in_chinese(make: Callable[..., KBQAService], docs: Path,
                                                   llm: FakeLLM) -> None:
    # Its answer and refusal sentence are Chinese: a notice in English beside them is one a reader may not read.
    service = make()
    service.add_files("kb", files_in(docs))
    llm.replies = ["应当在三十日内提出申请，或在45日内 [1]。"]
    answer = service.ask("kb", "当事人应当在多少日内提出申请？")
    assert not answer.refused and answer.sources
    assert answer.notice == "请对照来源核对此回答：45 不在它所依据的任何段落中。"
    llm.replies = ["根据已知信息无法回答该问题。"]
    assert service.ask("kb", "当事人应当在多少日内提出申请？").notice == "模型在检索到的段落中没有找到答案。"
    llm.replies = ["It must apply within 45 days [1]."]  # an English question's stays English
    assert service.ask("kb", "Within how many days must a party apply?").notice.startswith(
        "Check this answer against the sources: 45 is in none")


def test_the_latest_uploads_outcomes_are_kept_for_a_page_reloaded_meanwhile(make: Callable[..., KBQAService],
                                                                            docs: Path, tmp_path: Path) -> None:
    service = make()
    assert service.latest_upload("kb") is None  # no such knowledge base
    bad = tmp_path / "notes.xyz"
    bad.write_text("?", encoding="utf-8")
    seen: list[list[str] | None] = []
    service.add_files("kb", [bad, docs / "rivers.txt"],
                      on_file=lambda r: seen.append([f.name for f in service.latest_upload("kb") or []]))
    assert seen == [["notes.xyz"], ["notes.xyz", "rivers.txt"]]  # while it runs, as each file is settled
    kept = service.latest_upload("kb")
    assert kept is not None and [(f.name, f.status) for f in kept] == [("notes.xyz", "failed"), ("rivers.txt", "added")]
    assert service.latest_upload("kb", within=-1) is None  # not for ever
    service.delete_kb("kb")
    service.add_files("kb", [docs / "planets.md"])
    assert [f.name for f in service.latest_upload("kb") or []] == ["planets.md"]


@pytest.mark.parametrize(("limit", "shown"), [(0.01, "0.01"), (1, "1"), (2.5, "2.5"), (1_000_000, "1,000,000")])
def test_the_size_limit_is_named_as_it_was_set(limit: float, shown: str) -> None:
    from kbqa.ingest import file_too_large

    # 0.01 MB is 10485 bytes: it read "over the 0.00999928 MB limit"
    assert f"over the {shown} MB limit (ingest.max_file_mb)" in str(file_too_large("a.txt", 2**40, int(limit * 2**20)))


@pytest.mark.parametrize(("name", "title"), [
    ("state_of_the_union.txt", "state of the union"), ("en_galaxy_gaming_10k_cover.html", "en galaxy gaming 10k cover"),
    ("检察院行政诉讼监督规则.md", "检察院行政诉讼监督规则"), ("Q3 2024 results.docx", "Q3 2024 results"),
    ("report_v1.txt", "report v1"),
    # names that say nothing: a scanner's, a camera's, a program's default, kbqa eval's written-out contexts
    ("scan_0001.pdf", ""), ("IMG_2043.png", ""), ("DSC0001.jpg", ""), ("Document1.docx", ""), ("新建文本文档.txt", ""),
    ("context-00001.txt", ""), ("3f2a9c0d1e.pdf", ""), ("a.txt", ""), ("README.md", "")])
def test_a_documents_title_comes_from_its_file_name_unless_the_name_says_nothing(name: str, title: str) -> None:
    from kbqa.splitter import document_title

    assert document_title(name) == title


def test_both_retrievers_read_each_chunk_with_its_documents_title(make: Callable[..., KBQAService],
                                                                 tmp_path: Path) -> None:
    # A passage of galaxy_gaming_10k.html is about Galaxy Gaming though it never says so: a question naming the
    # company found the cover lines of another document first.
    (tmp_path / "galaxy_gaming_10k.html").write_text("<p>Its shares trade under the ticker GLXZ.</p>", encoding="utf-8")
    (tmp_path / "acme_annual_report.txt").write_text("Its shares trade under the ticker ACME.", encoding="utf-8")
    service = make(mode="bm25")
    service.add_files("kb", [tmp_path / "galaxy_gaming_10k.html", tmp_path / "acme_annual_report.txt"])
    embedder = service.ingestor.embedder
    seen: list[str] = []
    real = embedder.embed_documents
    embedder.embed_documents = lambda texts: seen.extend(texts) or real(texts)  # type: ignore[method-assign]
    (tmp_path / "acme_annual_report.txt").write_text("Its shares trade under the ticker ACMQ.", encoding="utf-8")
    service.add_files("kb", [tmp_path / "acme_annual_report.txt"])
    assert seen == ["acme annual report\nIts shares trade under the ticker ACMQ."]  # the dense index's text
    found = service.search("kb", "What is Galaxy Gaming's ticker?", 1)[0]
    assert (found.source, found.text) == ("galaxy_gaming_10k.html", "Its shares trade under the ticker GLXZ.")
    kb = service.root.open("kb")
    kb.manifest.generation += 1  # the keyword index lags: rebuilt from the store, titles included
    assert service.search("kb", "What is Galaxy Gaming's ticker?", 1)[0].source == "galaxy_gaming_10k.html"
    assert service.search("kb", "ACME annual report ticker", 1)[0].source == "acme_annual_report.txt"


def test_a_chunk_fits_the_embedding_model_with_its_title(make: Callable[..., KBQAService], tmp_path: Path) -> None:
    service = make()
    embedder = service.ingestor.embedder
    embedder.max_chars = 60  # the fake model's limit, in characters
    doc = tmp_path / "a_rather_long_descriptive_name.txt"
    doc.write_text("Fifty characters of text in one line, and then more. " * 3, encoding="utf-8")
    service.add_files("kb", [doc])
    slug = service.root.open("kb").slug
    texts = [t for _, batch in service.store.indexed_texts(slug) for t in batch]
    assert len(texts) > 3 and all(len(t) <= 60 for t in texts) and all(t.startswith("a rather long") for t in texts)


def test_a_title_in_the_other_language_than_a_chunk_is_not_read_with_it(make: Callable[..., KBQAService],
                                                                         tmp_path: Path) -> None:
    # An English name on a Chinese document lifted every chunk over the threshold for an English question sharing
    # the name's words, so the question was not translated and the right article not found.
    text = "第十二条 人民检察院应当在三个月内审查终结。"
    (tmp_path / "zh_procuratorate_rules.md").write_text(text, encoding="utf-8")
    (tmp_path / "检察规则.md").write_text(text + "\n\n第十三条 其他。", encoding="utf-8")
    service = make()
    service.add_files("kb", [tmp_path / "zh_procuratorate_rules.md", tmp_path / "检察规则.md"])
    texts = {t for _, batch in service.store.indexed_texts(service.root.open("kb").slug) for t in batch}
    assert texts == {text, f"检察规则\n{text}\n\n第十三条 其他。"}
