"""Held-out check on data kbqa was never tuned on: RGB's Chinese sample (Chen et al. 2023, "Benchmarking
Large Language Models in Retrieval-Augmented Generation"), ``../shared/corpus/benchmarks/rgb_zh_refine_sample50.jsonl``.

Every RGB record has a question, its answer (a list of items that must all appear, each a string or a list
of alternatives), passages that hold the answer (``positive``) and topical passages that do not
(``negative``; checked below: none holds the answer). Two of RGB's settings, run through kbqa's own service
with the embedded defaults:

- noise robustness: one knowledge base of every passage of every record (each passage a document);
  retrieval hit@k (a chunk holds a gold item) and answer accuracy as RGB scores it (every required item
  appears in the answer), plus how often kbqa refused a question it could answer;
- negative rejection: for each question, a knowledge base of only its negative passages; kbqa should refuse.
  Refusals are counted separately for the two ways kbqa refuses: no chunk reached the score threshold (the
  model is not asked), or the model wrote the template's refusal sentence.

Prompts, thresholds and fusion weights were chosen on CMRC2018 dev and the State of the Union; none on RGB.

    python benchmarks/rgb_eval.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import CORPUS, append_results, median

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.language import is_chinese
from kbqa.service import KBQAService
from kbqa.settings import load_settings

DATASET = CORPUS / "benchmarks" / "rgb_zh_refine_sample50.jsonl"


def required_items(record: dict[str, Any]) -> list[list[str]]:
    """RGB's answer: every item must appear; an item is a string or a list of alternatives."""
    return [[a] if isinstance(a, str) else list(a) for a in record["answer"]]


def rgb_correct(answer: str, required: list[list[str]]) -> bool:
    """RGB's accuracy: each required item appears (in one of its spellings) in the answer."""
    text = ev.squash(answer)
    return all(any(ev.squash(alt) in text for alt in item) for item in required)


def passages(name: str, texts: list[str]) -> ev.EvalDataset:
    """The distinct passages as documents, one .txt each, for ``ev.build_knowledge_base`` (named as ``kbqa eval``
    names its contexts: names that give their chunks no title, as RGB's passages have none)."""
    return ev.EvalDataset(name, [], texts=[(f"context-{n + 1:05d}.txt", t)
                                           for n, t in enumerate(dict.fromkeys(texts))])


def noise_robustness(service: KBQAService, records: list[dict[str, Any]]) -> dict[str, Any]:
    dataset = passages("rgb-noise", [p for r in records for p in r["positive"] + r["negative"]])
    ev.build_knowledge_base(service, dataset, "rgb-noise")
    items = [ev.EvalItem(r["query"], tuple(a for item in required_items(r) for a in item), None, str(r["id"]))
             for r in records]
    retrieval = ev.evaluate_retrieval(service, "rgb-noise", items)
    rows = []
    for r in records:
        answer = service.ask("rgb-noise", r["query"])
        rows.append({"question": r["query"], "gold": r["answer"], "answer": answer.answer,
                     "refused": answer.refused, "correct": rgb_correct(answer.answer, required_items(r)),
                     "seconds": answer.timings.get("total", 0.0)})
    chunks = next(kb.chunks for kb in service.list_kbs() if kb.name == "rgb-noise")
    return {"documents": len(dataset.texts), "chunks": chunks, "retrieval": retrieval, "rows": rows}


def negative_rejection(service: KBQAService, records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in records:
        kb = f"rgb-neg-{r['id']}"
        ev.build_knowledge_base(service, passages(kb, r["negative"]), kb)
        answer = service.ask(kb, r["query"])
        best = max((c.score for c in service.search(kb, r["query"], 1)), default=None)
        rows.append({"question": r["query"], "gold": r["answer"], "answer": answer.answer,
                     "refused": answer.refused, "by_threshold": answer.refused and not answer.sources,
                     "leaked": rgb_correct(answer.answer, required_items(r)), "best_score": best,
                     "seconds": answer.timings.get("total", 0.0)})
        service.delete_kb(kb)
    return {"rows": rows}


def check_clean(records: list[dict[str, Any]]) -> None:
    """RGB's negatives must not hold the answer, or the rejection test means nothing."""
    for r in records:
        for text in r["negative"]:
            if rgb_correct(text, required_items(r)):
                raise SystemExit(f"record {r['id']}: a negative passage holds the answer")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N records only")
    parser.add_argument("--no-append", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    records = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = records[: args.limit] if args.limit else records
    check_clean(records)
    assert all(is_chinese(r["query"]) for r in records)
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="kbqa-rgb-") as tmp:
        service = build_service(load_settings(paths={"knowledge_root": Path(tmp) / "kb"}))
        noise = noise_robustness(service, records)
        reject = negative_rejection(service, records)
        threshold = service.qa.threshold(records[0]["query"])

    n = len(records)
    nr, rr = noise["rows"], reject["rows"]
    ret = noise["retrieval"]
    correct = sum(r["correct"] for r in nr)
    refused_ans = sum(r["refused"] for r in nr)
    wrong = [r for r in nr if not r["correct"] and not r["refused"]]
    refused = sum(r["refused"] for r in rr)
    by_threshold = sum(r["by_threshold"] for r in rr)
    answered = [r for r in rr if not r["refused"]]
    neg_best = sorted(r["best_score"] for r in rr if r["best_score"] is not None)
    lines = [
        "| setting | questions | measure | kbqa |",
        "|---|---:|---|---:|",
        f"| noise robustness | {n} | retrieval hit@1 / hit@3 / hit@5 | {ret['hit@1']:.3f} / {ret['hit@3']:.3f} / "
        f"{ret['hit@5']:.3f} |",
        f"| noise robustness | {n} | accuracy (every required item in the answer) | {correct / n:.3f} ({correct}) |",
        f"| noise robustness | {n} | refused though answerable | {refused_ans / n:.3f} ({refused_ans}) |",
        f"| noise robustness | {n} | answered, but wrong or incomplete | {len(wrong) / n:.3f} ({len(wrong)}) |",
        f"| negative rejection | {n} | refused | {refused / n:.3f} ({refused}) |",
        f"| negative rejection | {n} | ... of which no chunk reached the threshold {threshold:.2f} | {by_threshold} |",
        f"| negative rejection | {n} | ... of which the model wrote the refusal | {refused - by_threshold} |",
        f"| negative rejection | {n} | answered anyway | {len(answered) / n:.3f} ({len(answered)}) |",
    ]
    examples = "\n".join(f"- {r['question']} | gold {r['gold']} | kbqa: {r['answer'][:100]!r}" for r in wrong[:8])
    not_refused = "\n".join(f"- {r['question']} (best chunk {r['best_score']:.3f}) | kbqa: {r['answer'][:100]!r}"
                            for r in answered[:8])
    body = (f"Data: {DATASET.name} ({n} records, the first 50 of RGB's zh_refine.json; third-party, CC BY-NC-SA "
            "4.0). Nothing in kbqa was tuned on it. Defaults: embedding "
            f"`{settings.embedding.model}` (quantize {settings.embedding.quantize}), retrieval "
            f"`{settings.retrieval.mode}`, top_k {settings.retrieval.top_k}, chunks {settings.splitter.chunk_size}/"
            f"{settings.splitter.chunk_overlap}, LLM `{settings.llm.model}` (greedy), Chinese refusal threshold "
            f"{threshold:.2f}.\n\n"
            f"Noise robustness: one knowledge base of all {noise['documents']} distinct passages "
            f"({noise['chunks']} chunks); negative rejection: one knowledge base per question holding only its "
            "negative passages (none holds the answer).\n\n" + "\n".join(lines) + "\n\n"
            f"- Median answer time: noise {median([r['seconds'] for r in nr]):.1f} s, rejection "
            f"{median([r['seconds'] for r in rr]):.1f} s.\n"
            f"- Best chunk score with only negatives: min {neg_best[0]:.3f}, median {median(neg_best):.3f}, "
            f"max {neg_best[-1]:.3f} (threshold {threshold:.2f}).\n"
            f"- Answers that leaked the gold answer with only negatives present: "
            f"{sum(r['leaked'] for r in rr)} (the model's own knowledge).\n\n"
            f"Wrong or incomplete answers (noise), first {min(8, len(wrong))} of {len(wrong)}:\n"
            f"{examples or '- none'}\n\n"
            f"Not refused (negative rejection), first {min(8, len(answered))} of {len(answered)}:\n"
            f"{not_refused or '- none'}\n")
    command = "python benchmarks/rgb_eval.py" + (f" --limit {args.limit}" if args.limit else "")
    if args.no_append:
        print(body)
    else:
        append_results("Held-out check: RGB Chinese sample (noise robustness, negative rejection)", body, command)


if __name__ == "__main__":
    main()
