"""``kbqa eval``: retrieval and answer quality of the configured pipeline on a QA dataset.

Datasets are read by ``kbqa.qa_datasets``; answers are scored by ``kbqa.scoring``.

A retrieval hit is a retrieved chunk that contains a gold answer (compared without whitespace) or, for
SQuAD-style data, comes from the gold context. A JSONL ``doc`` is a whole file, too coarse to count as a hit.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kbqa.errors import KBQAError
from kbqa.language import is_chinese
from kbqa.names import safe_file_name
from kbqa.qa_datasets import EvalDataset, EvalItem, load_dataset, sample
from kbqa.schema import FileResult, SourceChunk
from kbqa.scoring import exact_match, f1_score
from kbqa.service import KBQAService

#: What ``kbqa eval``, the benchmarks and the tests use, from here and from the modules it is made of.
__all__ = ["KS", "EvalDataset", "EvalItem", "KBQAError", "KBQAService", "build_knowledge_base", "embedding_label",
           "evaluate_answers", "evaluate_retrieval", "exact_match", "f1_score", "format_table", "is_hit",
           "load_dataset", "sample", "squash"]

KS = (1, 3, 5)


def squash(text: str) -> str:
    """How answers are found in retrieved text: NFKC, no whitespace, lower case."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text)).lower()


def is_hit(chunk: SourceChunk, item: EvalItem) -> bool:
    """The chunk comes from the gold document or contains a gold answer."""
    if item.doc and chunk.source == item.doc:
        return True
    text = squash(chunk.text)
    return any(squash(a) and squash(a) in text for a in item.answers)


def build_knowledge_base(service: KBQAService, dataset: EvalDataset, kb: str,
                         progress: Callable[[float, str], None] | None = None) -> float:
    """Ingest the dataset's documents into ``kb``; returns the seconds it took.

    Raises:
        KBQAError: a document failed to ingest (named as the user knows it): without it the figures are skewed.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kbqa-eval-") as tmp:
        files = list(dataset.files)
        for name, text in dataset.texts:
            (Path(tmp) / name).write_text(text, encoding="utf-8")
            files.append(Path(tmp) / name)
        report = service.add_files(kb, files, progress)
    failed = [f for f in report.files if f.status == "failed"]
    if failed:
        raise KBQAError(_ingest_failure(failed, dataset))
    return time.perf_counter() - start


def _ingest_failure(failed: list[FileResult], dataset: EvalDataset) -> str:
    labels = dict(dataset.labels)
    for path in dataset.files:
        labels[path.name] = str(path)
        with contextlib.suppress(KBQAError):  # the name the ingest reports it by, when that differs
            labels.setdefault(safe_file_name(path.name), str(path))
    first = failed[0]
    label = labels.get(first.name, first.name)
    # The loaders' advice is for an upload ("... and upload it again"); here the dataset is to be fixed
    reason = re.sub(r",?\s+and upload(?: it)? again", "", first.reason or "it could not be read").strip()
    # The name alone, not inside a path the reason may give
    named = re.compile(r"(?<![\w/\\.-])" + re.escape(first.name))
    reason = named.sub(lambda _: label, reason) if named.search(reason) else f"{label}: {reason}"
    if not reason.endswith((".", "!", "?")):
        reason += "."
    if len(failed) == 1:
        return (f"A dataset document could not be ingested: {reason} Fix or remove it; kbqa eval stops, as a "
                "missing document would skew the figures.")
    return (f"{len(failed)} dataset documents could not be ingested, e.g. {reason} Fix or remove them; kbqa eval "
            "stops, as missing documents would skew the figures.")


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p95_ms": round(float(np.percentile(arr, 95)), 1)}


def evaluate_retrieval(service: KBQAService, kb: str, items: Sequence[EvalItem], depth: int = 10,
                       progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """hit@1/3/5 and MRR@depth over the answerable questions (None without any), plus retrieval latency."""
    answerable = [i for i in items if i.answerable]
    hits = {k: 0 for k in KS}
    context_hits = {k: 0 for k in KS}
    rr = 0.0
    latency = []
    rows = []
    for n, item in enumerate(answerable):
        start = time.perf_counter()
        found = service.search(kb, item.question, depth, item.chat())
        latency.append(time.perf_counter() - start)
        first = next((r for r, c in enumerate(found, 1) if is_hit(c, item)), None)
        first_ctx = next((r for r, c in enumerate(found, 1) if item.doc and c.source == item.doc), None)
        for k in KS:
            hits[k] += first is not None and first <= k
            context_hits[k] += first_ctx is not None and first_ctx <= k
        rr += 1.0 / first if first else 0.0
        # What was found for each question, to read why one missed: the rank of the first hit (None: none
        # in the first ``depth``) and the top five passages by file and chunk
        rows.append({"id": item.id, "question": item.question, "hit_rank": first,
                     "top": [{"source": c.source, "chunk": c.chunk, "score": round(c.score, 4)} for c in found[:5]]})
        if progress and n % 20 == 0:
            progress(n / len(answerable), "retrieving")
    total = len(answerable)

    def share(count: float) -> float | None:
        # With nothing to find, 0.0 would read as "retrieval found nothing": it is no figure at all
        return count / total if total else None

    result: dict[str, Any] = {"answerable": total, **{f"hit@{k}": share(hits[k]) for k in KS},
                              f"mrr@{depth}": share(rr)}
    if any(i.doc for i in answerable):
        result.update({f"context_hit@{k}": share(context_hits[k]) for k in KS})
    result["retrieval_latency"] = _percentiles(latency)
    result["retrieved"] = rows
    return result


def evaluate_answers(service: KBQAService, kb: str, items: Sequence[EvalItem],
                     progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Exact match and F1 on answerable questions, refusal rates, and answer latency."""
    em = f1 = 0.0
    refused_answerable = refused_unanswerable = 0
    latency, first_token = [], []
    rows = []
    for n, item in enumerate(items):
        answer = service.ask(kb, item.question, item.chat())
        latency.append(answer.timings.get("total", 0.0))
        if "first_token" in answer.timings:
            first_token.append(answer.timings["first_token"])
        if item.answerable:
            # The question's language picks the scorer: a Chinese dataset's '1998' is scored as Chinese
            zh = is_chinese(item.question)
            em += exact_match(answer.answer, item.answers, zh=zh)
            f1 += f1_score(answer.answer, item.answers, zh=zh)
            refused_answerable += answer.refused
        else:
            refused_unanswerable += answer.refused
        rows.append({"id": item.id, "question": item.question, "gold": list(item.answers),
                     "answer": answer.answer, "refused": answer.refused, "query": answer.query or item.question})
        if progress:
            progress((n + 1) / len(items), "answering")
    n_ans = sum(i.answerable for i in items)
    n_un = len(items) - n_ans
    return {"answerable_questions": n_ans, "unanswerable_questions": n_un,
            "exact_match": em / n_ans if n_ans else None, "f1": f1 / n_ans if n_ans else None,
            "refusal_rate_unanswerable": refused_unanswerable / n_un if n_un else None,
            "refusal_rate_answerable": refused_answerable / n_ans if n_ans else None,
            "answer_latency": _percentiles(latency), "first_token_latency": _percentiles(first_token),
            "answers": rows}


def embedding_label(spec: str) -> str:
    """The embedding as shown: ``embedded:multilingual-e5-small#int8`` -> ``... (int8 chunks)``.

    A knowledge base records ``#int8`` when its chunks were encoded by the int8 copy of the model.
    """
    model, _, encoder = spec.partition("#")
    return f"{model} ({encoder} chunks)" if encoder else model


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a two-column text table."""
    lines = []
    for key, value in result.items():
        if key in ("answers", "retrieved"):  # per question: in --json only
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.0f}" for k, v in value.items()) or "-"
        elif isinstance(value, float):
            # Seconds are measured to the tenth at best; metrics are shares, read to three places
            value = f"{value:.1f}" if key.endswith("_seconds") else f"{value:.3f}"
        lines.append(f"{key:<28} {value if value is not None else '-'}")
    return "\n".join(lines)
