"""``kbqa eval`` with the embedded defaults: CMRC2018 dev (all questions for retrieval, a fixed sample for
answers) and the State of the Union set (all 32 questions, 8 of them unanswerable).

    python benchmarks/eval_defaults.py [--answers 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import CORPUS, ROOT, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.language import is_chinese
from kbqa.settings import load_settings


def run(dataset: ev.EvalDataset, retrieval_items: list[ev.EvalItem], answer_items: list[ev.EvalItem]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        service = build_service(load_settings(paths={"knowledge_root": Path(tmp)}))
        ingest_s = ev.build_knowledge_base(service, dataset, "eval")
        out = {"ingest_s": ingest_s, **ev.evaluate_retrieval(service, "eval", retrieval_items)}
        if answer_items:
            out.update(ev.evaluate_answers(service, "eval", answer_items))
    return out


def fmt(v: object) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=40, help="CMRC questions answered (fixed sample)")
    args = parser.parse_args()
    settings = load_settings()
    cmrc = ev.load_dataset(CORPUS / "cmrc2018_dev.json")
    docs = Path(tempfile.mkdtemp())
    (docs / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
    sotu = ev.load_dataset(ROOT / "benchmarks/datasets/sotu/sotu_qa.jsonl", docs=docs)
    results = {"CMRC2018 dev": run(cmrc, cmrc.items, ev.sample(cmrc.items, args.answers)),
               "State of the Union": run(sotu, sotu.items, sotu.items)}
    keys = ["answerable", "hit@1", "hit@3", "hit@5", "mrr@10", "context_hit@1", "context_hit@5", "answerable_questions",
            "exact_match", "f1", "unanswerable_questions", "refusal_rate_unanswerable", "refusal_rate_answerable"]
    lines = ["| metric | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(fmt(r.get(k)) for r in results.values()) + " |")
    for k in ("retrieval_latency", "answer_latency", "first_token_latency"):
        lines.append(f"| {k} p50 / p95 ms | " + " | ".join(
            f"{r[k]['p50_ms']:.0f} / {r[k]['p95_ms']:.0f}" if r.get(k) else "-" for r in results.values()) + " |")
    lines.append("| ingest s | " + " | ".join(f"{r['ingest_s']:.0f}" for r in results.values()) + " |")
    wrong = [row for r in results.values() for row in r.get("answers", [])
             if (row["gold"] and (row["refused"]
                                  or ev.f1_score(row["answer"], row["gold"], zh=is_chinese(row["question"])) < 0.3))
             or (not row["gold"] and not row["refused"])]
    examples = "\n".join(f"- {w['question']} | gold {w['gold'] or 'unanswerable'} | kbqa: {w['answer'][:120]!r}"
                         for w in wrong[:12])
    body = (f"Defaults: embedding `{settings.embedding.model}`, retrieval `{settings.retrieval.mode}` "
            f"(BM25 weight {settings.retrieval.bm25_weight} for Chinese / {settings.retrieval.bm25_weight_en} "
            f"otherwise, RRF k {settings.retrieval.rrf_k}), top_k {settings.retrieval.top_k}, chunks "
            f"{settings.splitter.chunk_size}/{settings.splitter.chunk_overlap}, LLM `{settings.llm.model}` "
            f"(greedy). Retrieval over all questions; answers for a fixed sample of {args.answers} CMRC questions "
            "(seed 0) and all 32 State of the Union questions. Exact match and F1 compare the whole generated "
            "answer with the short gold span, so they understate correct but wordy answers.\n\n"
            + "\n".join(lines) + "\n\nAnswers scored as wrong (F1 < 0.3, refused though answerable, or answered "
            f"though unanswerable), first {min(12, len(wrong))} of {len(wrong)}:\n{examples}\n")
    append_results("kbqa eval with the embedded defaults", body,
                   f"python benchmarks/eval_defaults.py --answers {args.answers}")


if __name__ == "__main__":
    main()
