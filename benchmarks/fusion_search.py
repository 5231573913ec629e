"""Choose the fusion settings (weights, RRF constant, ranking depth) by measurement.

Builds the CMRC2018 dev and State of the Union knowledge bases once with the given embedding model,
records each question's dense and BM25 rankings to a depth of 200, then replays reciprocal rank fusion
offline for a grid of settings. A fusion should never be worse than the better single retriever.

    python benchmarks/fusion_search.py [--model embedded:multilingual-e5-small]
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import tempfile
from pathlib import Path

import numpy as np
from _common import CORPUS, ROOT, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.settings import load_settings

DEPTH = 200


def rankings(model: str) -> dict[str, list[tuple[ev.EvalItem, list, list, dict]]]:
    """Per dataset: (item, dense [(id, cos)], bm25 [(id, score)], chunk id -> SourceChunk) per question."""
    sotu_docs = Path(tempfile.mkdtemp())
    (sotu_docs / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
    sets = {"CMRC2018 dev": ev.load_dataset(CORPUS / "cmrc2018_dev.json"),
            "State of the Union": ev.load_dataset(ROOT / "benchmarks/datasets/sotu/sotu_qa.jsonl", docs=sotu_docs)}
    out = {}
    for name, data in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            service = build_service(load_settings(paths={"knowledge_root": Path(tmp)}, embedding={"model": model}))
            ev.build_knowledge_base(service, data, "eval")
            kb = service.root.open("eval")
            rows = []
            r = service.qa.retriever
            for item in (i for i in data.items if i.answerable):
                vector = r.embedder.embed_query(item.question)
                dense = r.store.search(kb.slug, vector, DEPTH)
                bm25 = r.keywords.get(kb).search(item.question, DEPTH)
                info = {c.id: c for c in dense}
                missing = [i for i, _ in bm25 if i not in info]
                info.update({c.id: c for c in r.store.fetch(kb.slug, missing, vector)})
                rows.append((item, [(c.id, c.score) for c in dense], bm25, info))
            out[name] = rows
    return out


def fused(dense: list, bm25: list, wd: float, wb: float, k: int, candidates: int, full: bool) -> list[str]:
    """Fused order of the union of both retrievers' top ``candidates``.

    ``full``: a candidate's rank in the other retriever is looked up to DEPTH (absent: DEPTH + 1)
    instead of counting nothing when it is outside that retriever's own top ``candidates``.
    """
    d_rank = {i: r for r, (i, _) in enumerate(dense, 1)}
    b_rank = {i: r for r, (i, _) in enumerate(bm25, 1)}
    pool = [i for i, _ in dense[:candidates]] + [i for i, _ in bm25[:candidates]]
    limit = DEPTH if full else candidates
    scores: dict[str, float] = {}
    for i in pool:
        if i in scores:
            continue
        s = 0.0
        for w, ranks in ((wd, d_rank), (wb, b_rank)):
            rank = ranks.get(i, DEPTH + 1)
            if rank <= limit or full:
                s += w / (k + rank)
        scores[i] = s
    return sorted(scores, key=lambda i: -scores[i])


def metrics(rows: list, order_of) -> dict[str, float]:
    hits = {1: 0, 3: 0, 5: 0}
    rr = 0.0
    for item, dense, bm25, info in rows:
        order = order_of(dense, bm25)
        first = next((r for r, i in enumerate(order[:10], 1) if i in info and ev.is_hit(info[i], item)), None)
        for k in hits:
            hits[k] += bool(first and first <= k)
        rr += 1 / first if first else 0
    n = len(rows)
    return {"hit@1": hits[1] / n, "hit@3": hits[3] / n, "hit@5": hits[5] / n, "mrr@10": rr / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:multilingual-e5-small")
    parser.add_argument("--cache", help="pickle file to keep the recorded rankings in (reused when present)")
    args = parser.parse_args()
    if args.cache and Path(args.cache).is_file():
        data = pickle.loads(Path(args.cache).read_bytes())
    else:
        data = rankings(args.model)
        if args.cache:
            Path(args.cache).write_bytes(pickle.dumps(data))
    singles = {"dense": lambda d, b: [i for i, _ in d], "bm25": lambda d, b: [i for i, _ in b]}
    grid = list(itertools.product([1.0], [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0], [5, 10, 30, 60], [20], [False, True]))
    results = []
    for name, fn in singles.items():
        results.append((name, {d: metrics(rows, fn) for d, rows in data.items()}))
    for wd, wb, k, cand, full in grid:
        label = f"rrf {wd:g}:{wb:g} k={k} cand={cand}{' full-rank' if full else ''}"
        results.append((label, {d: metrics(rows, lambda dd, bb, a=(wd, wb, k, cand, full): fused(dd, bb, *a))
                                for d, rows in data.items()}))
    best_single = {d: {m: max(r[1][d][m] for r in results[:2]) for m in results[0][1][d]} for d in data}

    def never_worse(res: dict) -> bool:
        return all(res[d][m] >= best_single[d][m] - 1e-9 for d in data for m in res[d])

    def score(res: dict) -> float:  # mean of all metrics on both datasets
        return float(np.mean([v for d in res.values() for v in d.values()]))

    ranked = sorted(results[2:], key=lambda r: (-never_worse(r[1]), -score(r[1])))
    per_dataset = []
    for d in data:
        ok = [(label, res[d]) for label, res in results[2:]
              if all(res[d][m] >= best_single[d][m] - 1e-9 for m in res[d])]
        ok.sort(key=lambda r: -float(np.mean(list(r[1].values()))))
        best = (f"; best: {ok[0][0]} (" + ", ".join(f"{m} {v:.3f}" for m, v in ok[0][1].items()) + ")"
                if ok else "")
        per_dataset.append(f"- {d}: {len(ok)} of {len(grid)} settings are never worse than the better single "
                           f"retriever{best}")
    lines = ["| setting | " + " | ".join(f"{d} {m}" for d in data for m in ("hit@1", "hit@5", "mrr@10")) +
             " | never worse |", "|---|" + "---:|" * (3 * len(data) + 1)]
    for label, res in results[:2] + ranked[:12]:
        cells = [f"{res[d][m]:.3f}" for d in data for m in ("hit@1", "hit@5", "mrr@10")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if never_worse(res) else 'no'} |")
    top1 = []
    for d, rows in data.items():
        cos = np.array([dense[0][1] for _, dense, _, _ in rows])
        top1.append(f"- {d}: top-1 cosine of answerable questions: 1st percentile {np.percentile(cos, 1):.3f}, "
                    f"5th {np.percentile(cos, 5):.3f}, median {np.median(cos):.3f}, min {cos.min():.3f}")
    body = (f"Embedding `{args.model}`; {len(data['CMRC2018 dev'])} CMRC questions, "
            f"{len(data['State of the Union'])} State of the Union questions; rankings recorded to depth {DEPTH} "
            f"and fused offline ({len(grid)} settings; the 12 best shown after the two single retrievers). "
            "\"full-rank\": a candidate missing from one retriever's top list still gets its rank there "
            f"(looked up to depth {DEPTH}) instead of nothing.\n\n" + "\n".join(lines)
            + "\n\nPer dataset (questions of one language each):\n" + "\n".join(per_dataset)
            + "\n\nFor the refusal threshold:\n" + "\n".join(top1))
    append_results("Fusion settings search", body, f"python benchmarks/fusion_search.py --model {args.model}")


if __name__ == "__main__":
    main()
