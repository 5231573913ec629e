"""Choose the embedded retrieval defaults by measurement.

For each embedding model, builds one knowledge base per dataset through kbqa's real ingest pipeline,
then evaluates every retrieval mode on it (dense, BM25, hybrid with several fusion weights):

- CMRC2018 dev: 848 Chinese contexts, all 3,219 questions. "ctx hit@k" = a top-k chunk comes from the
  gold context (the usual measure); "hit@1 (any)" also counts a chunk holding the gold answer text.
- State of the Union: 24 answerable questions written for kbqa (benchmarks/datasets/sotu); a hit = a
  top-k chunk contains the gold answer text. Its 8 unanswerable questions give the score distribution
  used to calibrate the refusal threshold.

    python benchmarks/retrieval_quality.py [--limit N] [--models a,b] [--no-append]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import CORPUS, ROOT, Timer, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.retrieval import Mode, RetrievalConfig
from kbqa.settings import load_settings

MODELS = ["embedded:all-minilm-l6-v2", "embedded:multilingual-e5-small", "embedded:multilingual-e5-small#int8"]
#: (label, mode, dense weight, bm25 weight for every question, RRF constant); None = kbqa's defaults
#: (BM25 weight 2 for Chinese questions and 0.1 for others, RRF constant 5).
MODES: list[tuple[str, Mode | None, float, float, int]] = [
    ("dense", "dense", 1.0, 0.0, 60), ("bm25", "bm25", 0.0, 1.0, 60), ("hybrid 1:1", "hybrid", 1.0, 1.0, 60),
    ("hybrid 1:2", "hybrid", 1.0, 2.0, 60), ("hybrid 2:1", "hybrid", 2.0, 1.0, 60),
    ("hybrid 1:3", "hybrid", 1.0, 3.0, 60), ("hybrid (kbqa default)", None, 0, 0, 0)]


def datasets(limit: int | None) -> list[tuple[str, ev.EvalDataset, list[ev.EvalItem]]]:
    cmrc = ev.load_dataset(CORPUS / "cmrc2018_dev.json")
    sotu = ev.load_dataset(ROOT / "benchmarks" / "datasets" / "sotu" / "sotu_qa.jsonl", docs=_sotu_docs())
    return [("CMRC2018 dev", cmrc, ev.sample(cmrc.items, limit)), ("State of the Union", sotu, sotu.items)]


@functools.cache
def _sotu_docs() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sotu-docs-"))
    (folder / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
    return folder


def run_model(spec: str, data: list[tuple[str, ev.EvalDataset, list[ev.EvalItem]]]) -> list[dict]:
    model, _, quant = spec.partition("#")
    rows = []
    for name, dataset, items in data:
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(paths={"knowledge_root": Path(tmp)},
                                     embedding={"model": model, "quantize": quant or "none"})
            service = build_service(settings)
            # Every mode asks the same questions: encode each once (latency is measured in query_latency.py).
            embedder = service.qa.retriever.embedder
            embedder.embed_query = functools.lru_cache(maxsize=None)(embedder.embed_query)  # type: ignore
            with Timer() as t:
                ev.build_knowledge_base(service, dataset, "eval")
            chunks = service.store.count(service.root.open("eval").slug)
            base = RetrievalConfig()  # kbqa's defaults
            for label, mode, wd, wb, k in MODES:
                service.qa.retriever.config = base if mode is None else replace(
                    base, mode=mode, dense_weight=wd, bm25_weight=wb, bm25_weight_en=wb, rrf_k=k)
                r = ev.evaluate_retrieval(service, "eval", items)
                rows.append({"dataset": name, "model": spec, "mode": label, "ingest_s": t.seconds, "chunks": chunks,
                             **{k: r[k] for k in r if k.startswith(("hit@", "context_hit@", "mrr"))}})
                print(rows[-1], flush=True)
            if name == "State of the Union":
                rows[-1]["scores"] = top_scores(service, dataset.items, base)
    return rows


def top_scores(service, items: list[ev.EvalItem], base: RetrievalConfig) -> dict[str, list[float]]:
    """Top-1 cosine of answerable vs unanswerable questions (for the refusal threshold)."""
    service.qa.retriever.config = replace(base, mode="dense")  # the score is the same in every mode
    out: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
    for item in items:
        best = service.search("eval", item.question, 1)[0].score
        out["answerable" if item.answerable else "unanswerable"].append(best)
    return out


def table(rows: list[dict], dataset: str) -> str:
    rows = [r for r in rows if r["dataset"] == dataset]
    ctx = "context_hit@1" in rows[0]
    head = ("| model | mode | " + ("ctx hit@1 | ctx hit@3 | ctx hit@5 | hit@1 (any) |" if ctx else
                                  "hit@1 | hit@3 | hit@5 |") + " MRR@10 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = ([r["context_hit@1"], r["context_hit@3"], r["context_hit@5"], r["hit@1"]] if ctx else
                 [r["hit@1"], r["hit@3"], r["hit@5"]])
        lines.append(f"| {r['model'].replace('embedded:', '')} | {r['mode']} | "
                     + " | ".join(f"{c:.3f}" for c in cells) + f" | {r['mrr@10']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, help="CMRC questions (a fixed sample); default all 3,219")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    data = datasets(args.limit)
    rows = [row for spec in args.models.split(",") for row in run_model(spec, data)]
    ingest = "\n".join(f"- {r['model']} on {r['dataset']}: {r['chunks']} chunks ingested in {r['ingest_s']:.0f} s"
                       for r in rows if r["mode"] == "dense")
    scores = "\n".join(
        f"- {r['model']}: top-1 cosine, answerable min {min(r['scores']['answerable']):.3f} / median "
        f"{np.median(r['scores']['answerable']):.3f}; unanswerable max {max(r['scores']['unanswerable']):.3f} / "
        f"median {np.median(r['scores']['unanswerable']):.3f}" for r in rows if "scores" in r)
    body = (f"CMRC2018 dev ({len(data[0][2])} questions, 848 contexts, chunks of 500 characters with 50 overlap):\n\n"
            f"{table(rows, 'CMRC2018 dev')}\n\nState of the Union (24 answerable questions):\n\n"
            f"{table(rows, 'State of the Union')}\n\nIngest (kbqa pipeline, this run):\n{ingest}\n\n"
            f"Refusal calibration (State of the Union, dense):\n{scores}\n")
    if args.no_append:
        print(body)
    else:
        append_results("Retrieval quality: embedding models, BM25 and hybrids", body,
                       "python benchmarks/retrieval_quality.py" + (f" --limit {args.limit}" if args.limit else ""))


if __name__ == "__main__":
    main()
