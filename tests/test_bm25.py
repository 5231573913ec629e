"""The persisted BM25 keyword index of one knowledge base."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import kbqa.bm25
from kbqa.bm25 import FILE_NAME, BM25Index

DOCS = {
    "sotu:1": "We have announced 4,000 projects to rebuild roads and bridges across America.",
    "sotu:2": "GM is creating 4,000 jobs in Michigan, and Intel is building a factory in Ohio.",
    "sotu:3": "Tonight I nominate Ketanji Brown Jackson to the United States Supreme Court.",
    "zh:1": "《战国无双3》是由光荣和ω-force开发的战国无双系列的正统第三续作。",
    "zh:2": "人民检察院依法对行政诉讼实行法律监督，保障人民法院依法独立行使审判权。",
    "zh:3": "ChatGLM2-6B 的上下文长度由 ChatGLM-6B 的 2K 扩展到了 32K。",
}


def _index(folder: Path | None = None) -> BM25Index:
    index = BM25Index(folder)
    index.add(list(DOCS), list(DOCS.values()))
    return index


def _ids(hits: list[tuple[str, float]]) -> list[str]:
    return [chunk_id for chunk_id, _ in hits]


def test_chinese_chunks_are_counted_and_the_count_follows_changes(tmp_path: Path) -> None:
    index = _index()
    assert index.chinese_chunks() == (3, 6)  # zh:3, Chinese with a few English words, counts as Chinese
    index.delete(["zh:1", "zh:2"])
    assert index.chinese_chunks() == (1, 4)
    index.add(["en:4"], ["Rivers flow into the sea."])
    assert index.chinese_chunks() == (1, 5)
    index.folder = tmp_path
    index.save()
    assert BM25Index.open(tmp_path).chinese_chunks() == (1, 5)
    assert BM25Index().chinese_chunks() == (0, 0)


def test_exact_keyword_hit_ranks_first() -> None:
    hits = _index().search("Who is Ketanji Brown Jackson?", 3)
    assert _ids(hits) == ["sotu:3"]


def test_number_with_thousands_separator_finds_both_spellings() -> None:
    index = _index()
    assert set(_ids(index.search("4000 projects", 5))) == {"sotu:1", "sotu:2"}
    assert _ids(index.search("How many projects, 4,000?", 5))[0] == "sotu:1"


def test_chinese_query_finds_chinese_chunk() -> None:
    index = _index()
    assert _ids(index.search("《战国无双3》是由哪两个公司合作开发的？", 3))[0] == "zh:1"
    assert _ids(index.search("检察院如何监督行政诉讼", 3))[0] == "zh:2"
    assert _ids(index.search("ChatGLM2-6B 的上下文长度是多少", 3))[0] == "zh:3"


def test_results_are_best_first_positive_and_at_most_k() -> None:
    index = _index()
    hits = index.search("4,000 jobs in Michigan and projects", 1)
    assert _ids(hits) == ["sotu:2"]
    hits = index.search("4,000 jobs in Michigan and projects", 10)
    assert _ids(hits) == ["sotu:2", "sotu:1"]
    assert hits[0][1] > hits[1][1] > 0
    assert index.search("zebra", 5) == [] and index.search("", 5) == [] and index.search("4000", 0) == []


def test_scores_match_a_hand_computed_okapi_bm25_example() -> None:
    index = BM25Index()
    index.add_tokens(["d1", "d2", "d3"], [["a", "b", "a"], ["b", "c"], ["c", "c", "c", "d"]])
    # N = 3, avgdl = 3, k1 = 1.5, b = 0.75; idf(a) = ln(1 + 2.5/1.5), idf(c) = ln(1 + 1.5/2.5).
    expected = {
        "d1": math.log(1 + 2.5 / 1.5) * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 3 / 3)),
        "d2": math.log(1 + 1.5 / 2.5) * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2 / 3)),
        "d3": math.log(1 + 1.5 / 2.5) * 3 * 2.5 / (3 + 1.5 * (0.25 + 0.75 * 4 / 3)),
    }
    hits = index.search_tokens(["a", "c"], 10)
    assert _ids(hits) == sorted(expected, key=expected.__getitem__, reverse=True)
    for chunk_id, score in hits:
        assert score == pytest.approx(expected[chunk_id], rel=1e-6)


def test_delete_removes_hits_and_unknown_ids_are_ignored() -> None:
    index = _index()
    assert index.delete(["sotu:3", "no-such-id"]) == 1
    assert len(index) == len(DOCS) - 1 and "sotu:3" not in index
    assert index.search("Ketanji Brown Jackson", 5) == []


def test_deleting_a_whole_document_in_one_call() -> None:
    index = BM25Index()
    index.add_tokens([f"big:{i}" for i in range(5000)], [["shared", f"w{i}"] for i in range(5000)])
    index.add_tokens(["small:0"], [["shared", "other"]])
    index.search("shared", 1)
    assert index.delete(f"big:{i}" for i in range(5000)) == 5000
    assert _ids(index.search_tokens(["shared", "w17"], 5)) == ["small:0"]


def test_adding_an_existing_id_replaces_its_text() -> None:
    index = _index()
    index.add(["sotu:3"], ["Bridges and tunnels."])
    assert len(index) == len(DOCS)
    assert index.search("Ketanji", 5) == []
    assert "sotu:3" in _ids(index.search("tunnels", 5))


def test_an_id_repeated_in_one_call_keeps_its_last_text() -> None:
    index = BM25Index()
    index.add(["x", "x"], ["first words", "second words"])
    assert len(index) == 1
    assert index.search("first", 5) == [] and _ids(index.search("second", 5)) == ["x"]


def test_searches_see_adds_and_deletes_made_after_an_earlier_search() -> None:
    index = _index()
    assert index.search("tunnels", 5) == []
    index.add(["new"], ["tunnels under the river"])
    assert _ids(index.search("tunnels", 5)) == ["new"]
    index.delete(["new"])
    assert index.search("tunnels", 5) == []


def test_mismatched_ids_and_texts_are_refused() -> None:
    with pytest.raises(ValueError):
        BM25Index().add(["a", "b"], ["only one"])


def _reference_scores(docs: dict[str, list[str]], query: list[str]) -> dict[str, float]:
    """Plain-Python Okapi BM25, for comparison."""
    n = len(docs)
    avgdl = sum(map(len, docs.values())) / n
    df = Counter(t for tokens in docs.values() for t in set(tokens))
    scores = {}
    for chunk_id, tokens in docs.items():
        tf = Counter(tokens)
        score = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] * 2.5
                    / (tf[t] + 1.5 * (0.25 + 0.75 * len(tokens) / avgdl)) for t in query if t in tf)
        if score > 0:
            scores[chunk_id] = score
    return scores


def test_random_adds_and_deletes_score_like_a_plain_bm25(tmp_path: Path) -> None:
    rng = random.Random(7)
    vocab = [f"t{i}" for i in range(60)]
    live: dict[str, list[str]] = {}
    index = BM25Index(tmp_path)
    for step in range(40):
        ids = [f"c{rng.randrange(300)}" for _ in range(rng.randint(1, 25))]
        tokens = [rng.choices(vocab, k=rng.randint(0, 30)) for _ in ids]
        index.add_tokens(ids, tokens)
        live.update(zip(ids, tokens, strict=True))
        gone = rng.sample(sorted(live), k=min(len(live), rng.randint(0, 10)))
        index.delete(gone)
        for chunk_id in gone:
            del live[chunk_id]
        if step % 7 == 3:
            index.save()
            index = BM25Index.open(tmp_path)
        query = rng.choices(vocab, k=3)
        got = dict(index.search_tokens(query, 1000))
        want = _reference_scores(live, query) if live else {}
        assert got.keys() == want.keys()
        assert all(got[i] == pytest.approx(want[i], rel=1e-5) for i in want)
        assert len(index) == len(live)


def test_forgetting_unused_terms_keeps_the_rest_searchable() -> None:
    index = BM25Index()
    index.add_tokens([f"n{i}" for i in range(12_000)], [[f"only{i}", "common"] for i in range(12_000)])
    index.add_tokens(["keep"], [["common", "kept"]])
    index.search_tokens(["common"], 1)
    index.delete(f"n{i}" for i in range(12_000))
    assert _ids(index.search_tokens(["kept"], 5)) == ["keep"]
    assert len(index._vocab) < 100  # the 12,000 terms only deleted chunks had are gone
    index.add_tokens(["later"], [["only5", "kept"]])
    assert _ids(index.search_tokens(["only5"], 5)) == ["later"]
    assert _ids(index.search_tokens(["kept", "common"], 5)) == ["keep", "later"]


def test_persisted_index_round_trips_with_its_generation(tmp_path: Path) -> None:
    index = _index(tmp_path)
    index.delete(["zh:2"])
    index.generation = 42
    index.save()
    reopened = BM25Index.open(tmp_path)
    assert reopened.generation == 42 and len(reopened) == len(DOCS) - 1
    for query in ["4,000 projects", "战国无双", "Ketanji", "检察院"]:
        assert reopened.search(query, 5) == index.search(query, 5)
    reopened.add(["zh:2"], [DOCS["zh:2"]])
    reopened.delete(["sotu:3"])
    reopened.save()
    again = BM25Index.open(tmp_path)
    assert _ids(again.search("检察院", 5)) == ["zh:2"] and again.search("Ketanji", 5) == []


def test_reopening_does_not_run_the_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _index(tmp_path).save()
    monkeypatch.setattr(kbqa.bm25, "tokenize", lambda text: pytest.fail("tokenized on open"))
    assert len(BM25Index.open(tmp_path).search_tokens(["战国"], 5)) == 1


def test_missing_index_opens_empty_with_unknown_generation(tmp_path: Path) -> None:
    index = BM25Index.open(tmp_path / "no-such-kb")
    assert len(index) == 0 and index.generation == -1 and index.search("anything", 5) == []


def test_empty_index_saves_and_reopens(tmp_path: Path) -> None:
    index = BM25Index(tmp_path)
    index.generation = 0
    index.save()
    reopened = BM25Index.open(tmp_path)
    assert len(reopened) == 0 and reopened.generation == 0 and reopened.search("x", 3) == []


def test_clear_empties_the_index_and_keeps_the_generation(tmp_path: Path) -> None:
    index = _index(tmp_path)
    index.generation = 5
    index.clear()
    assert len(index) == 0 and index.search("Ketanji", 5) == [] and index.generation == 5
    index.add(["a"], ["Ketanji"])
    assert _ids(index.search("Ketanji", 5)) == ["a"]


def test_save_failing_midway_leaves_the_previous_index_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _index(tmp_path)
    index.generation = 1
    index.save()
    index.delete(["sotu:3"])
    index.generation = 2

    def crash(file, **arrays):  # writes part of the file, then fails like a full disk
        file.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        index.save()
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left behind
    reopened = BM25Index.open(tmp_path)
    assert reopened.generation == 1 and _ids(reopened.search("Ketanji", 5)) == ["sotu:3"]


def test_save_crashing_before_the_rename_leaves_the_previous_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _index(tmp_path)
    index.generation = 1
    index.save()
    index.generation = 2
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        index.save()
    monkeypatch.undo()
    assert BM25Index.open(tmp_path).generation == 1


def test_stale_temporary_files_of_a_killed_save_are_removed_on_open(tmp_path: Path) -> None:
    _index(tmp_path).save()
    stale = tmp_path / f".{FILE_NAME}.123.abc.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert len(BM25Index.open(tmp_path)) == len(DOCS)
    assert not stale.exists()


def test_corrupt_index_file_opens_empty_so_it_is_rebuilt(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"not an npz file")
    index = BM25Index.open(tmp_path)
    assert len(index) == 0 and index.generation == -1


def test_index_built_by_another_tokenizer_opens_empty_so_it_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _index(tmp_path)
    index.generation = 3
    monkeypatch.setattr(kbqa.bm25, "TOKENIZER_ID", "an-older-tokenizer")
    index.save()
    monkeypatch.undo()
    reopened = BM25Index.open(tmp_path)
    assert len(reopened) == 0 and reopened.generation == -1


def test_saving_without_a_folder_is_refused() -> None:
    with pytest.raises(ValueError):
        _index().save()


def test_searches_running_during_adds_do_not_fail() -> None:
    index = _index()
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(200):
                index.search_tokens(["tunnels", "4000"], 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for i in range(200):
        index.add_tokens([f"t{i}"], [["tunnels", f"x{i}"]])
        if i % 3 == 0:
            index.delete([f"t{i - 1}"])
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index.search_tokens(["tunnels"], 1000)) == len(index) - len(DOCS)
