"""Okapi BM25 keyword index of one knowledge base's chunks, persisted in the knowledge-base folder.

The index is term-major (CSC-like) postings of raw term counts: ``indptr`` (terms + 1), ``rows``
(int32 chunk rows, ascending per term) and ``tf`` (uint16), plus each chunk's token count. A query
reads only its own terms' postings, computes their BM25 weights, adds them into a dense score
vector and takes the top k with ``argpartition``: about 1 ms at 100k chunks (benchmarks/RESULTS.md).

Adds are counted and queued; deletes only mark rows dead. The next search (or ``save``) merges
them in one vectorised O(postings) pass. The counts themselves (the tokenized chunks) are saved,
so reopening never re-runs jieba. ``save`` writes a single ``.npz`` under a temporary name, fsyncs
it and ``os.replace``-s it over the old one: a crash at any point leaves one complete index.
Mutations and merges hold a lock; searches read an immutable snapshot, so they may run in threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from zipfile import BadZipFile

import numpy as np
import scipy.sparse

from kbqa.language import HAN
from kbqa.tokenize import TOKENIZER_ID, tokenize

log = logging.getLogger(__name__)

FILE_NAME = "bm25.npz"
_FORMAT = 1
_TF_MAX = np.iinfo(np.uint16).max
_STALE_TEMP_S = 600.0  # a temporary file this old is left by a killed save
_BATCH = 2048  # chunks counted per numpy conversion (bounds the Python objects alive at once)
_FORGET_TERMS = 10_000  # forget unused terms once more than this many (and half the vocabulary)


@dataclass(frozen=True)
class _Snapshot:
    """Immutable search state: merged postings, per-term idf, per-row length normalisation."""

    ids: list[str]
    vocab: dict[str, int]
    indptr: np.ndarray
    rows: np.ndarray
    tf: np.ndarray
    idf: np.ndarray  # float32 per term
    norm: np.ndarray  # float32 per row: k1 * (1 - b + b * length / average length)


class BM25Index:
    """BM25 index from chunk ids to chunk texts, kept in step with a vector store by its caller.

    Attributes:
        folder: Where ``save`` writes ``bm25.npz``; None for an in-memory index.
        generation: Caller-owned counter saved with the index, to detect an index out of step with
            the vector store after a crash. -1 when no saved index was found, or the saved one was
            unreadable or built by another tokenizer version (so it must be rebuilt).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
    """

    def __init__(self, folder: Path | None = None, *, k1: float = 1.5, b: float = 0.75) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.k1, self.b = k1, b
        self.generation = -1
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._vocab: dict[str, int] = {}  # term -> id, in id order
        self._ids: list[str] = []  # row -> id: merged rows, then pending rows
        self._row_of: dict[str, int] = {}  # live id -> row
        self._alive = bytearray()  # row -> 1 live, 0 deleted or replaced
        self._lengths: list[int] = []  # token count of each pending row
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # term ids, tf, terms per row
        self._indptr = np.zeros(1, np.int64)
        self._rows = np.empty(0, np.int32)
        self._tf = np.empty(0, np.uint16)
        self._doc_len = np.empty(0, np.int32)
        self._snapshot: _Snapshot | None = None
        self._chinese: tuple[_Snapshot, tuple[int, int]] | None = None  # chinese_chunks() of a snapshot

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._row_of

    def ids(self) -> list[str]:
        """Return the ids of the indexed chunks (e.g. to compare with the vector store's)."""
        with self._lock:
            return list(self._row_of)

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Tokenize and index chunks; an id already present is replaced.

        Args:
            ids: Chunk ids (the vector store's ids).
            texts: Chunk texts, one per id.

        Raises:
            ValueError: If ``ids`` and ``texts`` differ in length.
        """
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        self.add_tokens(ids, [tokenize(text) for text in texts])

    def add_tokens(self, ids: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        """Index already tokenized chunks (made by ``tokenize`` with its defaults), like ``add``.

        Raises:
            ValueError: If ``ids`` and ``tokens`` differ in length.
        """
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids but {len(tokens)} token lists")
        with self._lock:
            batches = [self._count(tokens[i : i + _BATCH]) for i in range(0, len(tokens), _BATCH)]
            row_of, all_ids, alive = self._row_of, self._ids, self._alive
            for chunk_id in ids:
                old_row = row_of.get(chunk_id)
                if old_row is not None:  # replaced, or repeated within this call: the last one wins
                    alive[old_row] = 0
                row_of[chunk_id] = len(all_ids)
                all_ids.append(chunk_id)
                alive.append(1)
            self._lengths.extend(map(len, tokens))
            self._pending.extend(batches)
            self._snapshot = None

    def _count(self, tokens: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count a batch of chunks' terms: (term ids, their counts, distinct terms per chunk)."""
        vocab = self._vocab
        term_parts: list[list[int]] = []
        tf_parts: list[list[int]] = []
        for chunk_tokens in tokens:
            counts = Counter(chunk_tokens)
            term_ids = list(map(vocab.get, counts))
            if None in term_ids:  # new terms get the next ids
                term_ids = [vocab.setdefault(term, len(vocab)) for term in counts]
            term_parts.append(term_ids)  # type: ignore[arg-type]
            tf_parts.append(list(counts.values()))
        per_row = np.fromiter(map(len, term_parts), np.int64, len(term_parts))
        total = int(per_row.sum())
        flat_terms = np.fromiter(chain.from_iterable(term_parts), np.int32, total)
        flat_tf = np.fromiter(chain.from_iterable(tf_parts), np.int64, total)
        return flat_terms, np.minimum(flat_tf, _TF_MAX).astype(np.uint16), per_row

    def delete(self, ids: Iterable[str]) -> int:
        """Remove chunks by id (e.g. all of one document's at once); unknown ids are ignored.

        Returns:
            How many chunks were removed.
        """
        removed = 0
        with self._lock:
            for chunk_id in ids:
                row = self._row_of.pop(chunk_id, None)
                if row is not None:
                    self._alive[row] = 0
                    removed += 1
            if removed:
                self._snapshot = None
        return removed

    def clear(self) -> None:
        """Remove every chunk (``generation`` is kept; ``save`` to persist the empty index)."""
        with self._lock:
            self._reset()

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Return the k chunks with the highest BM25 score for a query.

        Args:
            query: A question or keywords, Chinese, English or mixed.
            k: How many results at most.

        Returns:
            ``(chunk_id, score)`` pairs, best first; only chunks sharing a term with the query (score > 0).
        """
        return self.search_tokens(tokenize(query), k)

    def search_tokens(self, tokens: Sequence[str], k: int) -> list[tuple[str, float]]:
        """Like ``search`` for a tokenized query; a repeated term counts once per occurrence."""
        snap = self._snapshot or self._build()
        n_rows, n_terms = len(snap.ids), len(snap.idf)
        if k <= 0 or n_rows == 0:
            return []
        scores = np.zeros(n_rows, np.float32)
        for term, query_tf in Counter(tokens).items():
            term_id = snap.vocab.get(term)
            if term_id is None or term_id >= n_terms:  # unknown, or added after this snapshot
                continue
            lo, hi = snap.indptr[term_id], snap.indptr[term_id + 1]
            rows, tf = snap.rows[lo:hi], snap.tf[lo:hi].astype(np.float32)
            scale = np.float32(query_tf * (self.k1 + 1.0)) * snap.idf[term_id]
            scores[rows] += scale * tf / (tf + snap.norm[rows])  # rows are distinct within a term
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(scores[hits], len(hits) - k)[len(hits) - k :]]
        hits = hits[np.lexsort((hits, -scores[hits]))]
        return [(snap.ids[row], float(scores[row])) for row in hits]

    def chinese_chunks(self) -> tuple[int, int]:
        """How many chunks are mostly Chinese (at least half their tokens hold Han characters), of how many.

        Counted over the postings (O(postings): about a second at 100k chunks on 2 cores) once per state of
        the index: whether a question may be about documents in the other language than its own.
        """
        snap = self._snapshot or self._build()
        counted = self._chinese
        if counted is not None and counted[0] is snap:
            return counted[1]
        n_rows, n_terms = len(snap.ids), len(snap.idf)
        with self._lock:  # the vocabulary grows under the lock; a snapshot reads only its first n_terms
            terms = list(snap.vocab.items())
        han = np.zeros(n_terms, bool)
        for term, term_id in terms:
            if term_id < n_terms and HAN.search(term):
                han[term_id] = True
        tf = snap.tf.astype(np.float64)
        total = np.bincount(snap.rows, weights=tf, minlength=n_rows)
        in_han = han[np.repeat(np.arange(n_terms), np.diff(snap.indptr))]
        han_tf = np.bincount(snap.rows[in_han], weights=tf[in_han], minlength=n_rows)
        result = int(np.count_nonzero((total > 0) & (2 * han_tf >= total))), n_rows
        self._chinese = (snap, result)
        return result

    def _build(self) -> _Snapshot:
        """Merge pending adds and deletes, then compute idf and length norms (the search state)."""
        with self._lock:
            if self._snapshot is not None:
                return self._snapshot
            started = time.perf_counter()
            if self._pending or len(self._row_of) < len(self._ids):
                self._merge()
            n_rows, df = len(self._ids), np.diff(self._indptr)
            idf = np.log1p((n_rows - df + 0.5) / (df + 0.5)).astype(np.float32)
            avg_len = float(self._doc_len.mean()) if n_rows else 0.0
            rel_len = self._doc_len / avg_len if avg_len > 0 else np.ones(n_rows)
            norm = (self.k1 * (1.0 - self.b + self.b * rel_len)).astype(np.float32)
            self._snapshot = _Snapshot(list(self._ids), self._vocab, self._indptr, self._rows, self._tf,
                                       idf, norm)
            log.debug("BM25 index built: %d chunks, %d postings in %.3f s", n_rows, len(self._rows),
                      time.perf_counter() - started)
            return self._snapshot

    def _merge(self) -> None:
        """Drop deleted rows and merge pending rows into the term-sorted postings, in O(postings)."""
        n_built, n_terms, n_live = len(self._doc_len), len(self._vocab), len(self._row_of)
        alive = np.frombuffer(bytes(self._alive), np.uint8).astype(bool)
        new_row = (np.cumsum(alive, dtype=np.int64) - 1).astype(np.int32)
        rows, tf, indptr = self._rows, self._tf, self._indptr
        if not alive[:n_built].all():  # filtering keeps old postings sorted by (term, row)
            keep = alive[rows]
            dropped_terms = np.searchsorted(indptr, np.flatnonzero(~keep), side="right") - 1
            dropped = np.bincount(dropped_terms, minlength=len(indptr) - 1)
            indptr = indptr - np.concatenate(([0], np.cumsum(dropped)))
            rows, tf = new_row[rows[keep]], tf[keep]
        indptr = np.pad(indptr, (0, n_terms + 1 - len(indptr)), mode="edge")  # terms new since then
        lengths = [self._doc_len[alive[:n_built]], np.asarray(self._lengths, np.int32)[alive[n_built:]]]
        if self._pending:
            per_row = np.concatenate([batch[2] for batch in self._pending])
            terms = np.concatenate([batch[0] for batch in self._pending])
            pending_tf = np.concatenate([batch[1] for batch in self._pending])
            pending_rows = np.repeat(new_row[n_built:], per_row)
            if not alive[n_built:].all():
                live = np.repeat(alive[n_built:], per_row)
                terms, pending_tf, pending_rows = terms[live], pending_tf[live], pending_rows[live]
            # scipy's COO -> CSR conversion is a stable counting sort by term: rows stay ascending.
            new = scipy.sparse.csr_matrix((pending_tf, (terms, pending_rows)), shape=(n_terms, n_live))
            new_rows, new_tf = new.indices.astype(np.int32, copy=False), new.data.astype(np.uint16)
            if len(rows):  # each term's new rows go after its older ones, which are all smaller
                at = indptr[np.repeat(np.arange(n_terms), np.diff(new.indptr)) + 1]
                new_rows, new_tf = np.insert(rows, at, new_rows), np.insert(tf, at, new_tf)
            rows, tf, indptr = new_rows, new_tf, indptr + new.indptr
        self._rows, self._tf, self._indptr = rows, tf, indptr
        self._doc_len = np.concatenate(lengths)
        self._ids = [chunk_id for chunk_id, live in zip(self._ids, alive, strict=True) if live]
        self._row_of = {chunk_id: i for i, chunk_id in enumerate(self._ids)}
        self._alive = bytearray(b"\x01" * len(self._ids))
        self._pending, self._lengths = [], []
        used = np.diff(indptr) > 0
        if len(used) - used.sum() > max(_FORGET_TERMS, n_terms // 2):  # terms only deleted chunks had
            self._vocab = {t: i for i, t in enumerate(t for t, u in zip(self._vocab, used, strict=True) if u)}
            self._indptr = np.concatenate(([0], indptr[1:][used]))

    def save(self) -> None:
        """Write the index and ``generation`` to ``folder/bm25.npz`` atomically.

        Raises:
            ValueError: If the index has no folder.
            OSError: If the file cannot be written; the previously saved index is then intact.
        """
        if self.folder is None:
            raise ValueError("this BM25 index has no folder to save to")
        with self._lock:
            self._build()
            meta = {"format": _FORMAT, "tokenizer": TOKENIZER_ID, "generation": self.generation}
            arrays = {"meta": _utf8(meta), "ids": _utf8(self._ids), "terms": _utf8(list(self._vocab)),
                      "indptr": self._indptr, "rows": self._rows, "tf": self._tf, "doc_len": self._doc_len}
            self.folder.mkdir(parents=True, exist_ok=True)
            temp = self.folder / f".{FILE_NAME}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            try:
                with open(temp, "wb") as f:
                    np.savez(f, allow_pickle=False, **arrays)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, self.folder / FILE_NAME)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            with suppress(OSError):  # make the rename durable where directories can be fsynced
                fd = os.open(self.folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    @classmethod
    def open(cls, folder: Path, *, k1: float = 1.5, b: float = 0.75) -> BM25Index:
        """Load the index saved in a folder, or start an empty one there.

        A missing, unreadable or other-tokenizer index gives an empty index with ``generation``
        -1 (and a logged warning if a file was there), so the caller's generation check rebuilds it.

        Args:
            folder: The knowledge base's folder.
            k1: BM25 term-frequency saturation.
            b: BM25 length normalisation.

        Returns:
            The index; its first search computes the weights (no re-tokenizing).
        """
        index = cls(folder, k1=k1, b=b)
        folder = Path(folder)
        for temp in folder.glob(f".{FILE_NAME}.*.tmp"):  # left by a killed save
            with suppress(OSError):
                if time.time() - temp.stat().st_mtime > _STALE_TEMP_S:
                    temp.unlink()
        path = folder / FILE_NAME
        if not path.exists():
            return index
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]))
                if meta.get("format") != _FORMAT or meta.get("tokenizer") != TOKENIZER_ID:
                    log.warning("BM25 index %s was made by another version (%s); it must be rebuilt",
                                path, meta.get("tokenizer"))
                    return index
                ids, terms = json.loads(bytes(data["ids"])), json.loads(bytes(data["terms"]))
                indptr, rows = data["indptr"].astype(np.int64), data["rows"].astype(np.int32)
                tf, doc_len = data["tf"].astype(np.uint16), data["doc_len"].astype(np.int32)
            _check(ids, terms, indptr, rows, tf, doc_len)
            generation = int(meta["generation"])
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, BadZipFile) as exc:
            log.warning("BM25 index %s is unreadable (%s); it must be rebuilt", path, exc)
            return index
        index._ids, index._vocab = ids, {t: i for i, t in enumerate(terms)}
        index._row_of = {chunk_id: i for i, chunk_id in enumerate(ids)}
        index._alive = bytearray(b"\x01" * len(ids))
        index._indptr, index._rows, index._tf, index._doc_len = indptr, rows, tf, doc_len
        index.generation = generation
        return index


def _utf8(value: object) -> np.ndarray:
    """JSON-encode a value as a uint8 array (``np.savez`` then needs no pickling)."""
    return np.frombuffer(json.dumps(value, ensure_ascii=False).encode("utf-8"), np.uint8)


def _check(ids: object, terms: object, indptr: np.ndarray, rows: np.ndarray, tf: np.ndarray,
           doc_len: np.ndarray) -> None:
    """Raise ValueError unless the loaded parts form a consistent index."""
    if not (isinstance(ids, list) and isinstance(terms, list) and all(isinstance(i, str) for i in ids)
            and len(set(ids)) == len(ids) == len(doc_len) and len(set(terms)) == len(terms)
            and len(indptr) == len(terms) + 1 and indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
            and indptr[-1] == len(rows) == len(tf)
            and (not len(rows) or 0 <= rows.min() <= rows.max() < len(ids))):
        raise ValueError("its parts do not form a consistent index")
