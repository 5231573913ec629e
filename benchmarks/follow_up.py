"""Follow-up questions in a chat: how each ``retrieval.follow_up`` mode finds and answers them.

Two hand-written sets (``benchmarks/datasets/followup``): 20 English questions over the State of the Union
speech and 20 Chinese ones over three Chinese documents; in each, 15 follow-ups that cannot be understood
without the earlier turn ("How much will it cost?", "那最后一种呢？") and 5 topic switches (a standalone
question on another subject, to check that reading the history does not hurt). All four documents go into
one knowledge base. Each mode runs on the same service, side by side:

- ``off``: the question alone;
- ``concat``: the earlier questions searched for with it, and the earlier turns shown to the model;
- ``rewrite``: the LLM rewrites the question into a standalone one, which is searched for and answered.

Retrieval hit@k counts a retrieved chunk that contains the gold span; an answer is right when it contains
the gold span (after removing whitespace and case).

    python benchmarks/follow_up.py [--modes off,concat,rewrite] [--no-answers]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import CORPUS, ROOT, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.settings import load_settings

SETS = {"English (State of the Union)": "sotu_followup.jsonl", "Chinese (3 documents)": "zh_followup.jsonl"}


def right(answer: str, gold: tuple[str, ...]) -> bool:
    return any(ev.squash(g) in ev.squash(answer) for g in gold)


def run_mode(service, items: list[ev.EvalItem], answers: bool) -> dict:
    out: dict = {}
    for kind in ("follow-up", "topic-switch"):
        group = [i for i in items if i.kind == kind]
        r = ev.evaluate_retrieval(service, "followup", group)
        out[kind] = {"n": len(group), "hit@1": r["hit@1"], "hit@5": r["hit@5"],
                     "search_p50_ms": r["retrieval_latency"]["p50_ms"]}
        if answers:
            start = time.perf_counter()
            rows = ev.evaluate_answers(service, "followup", group)["answers"]
            out[kind]["answer_s"] = (time.perf_counter() - start) / max(len(group), 1)
            out[kind]["right"] = sum(right(row["answer"], tuple(row["gold"])) for row in rows)
            out[kind]["refused"] = sum(row["refused"] for row in rows)
            out[kind]["rows"] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="off,concat,rewrite")
    parser.add_argument("--no-answers", action="store_true", help="retrieval only")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    modes = args.modes.split(",")
    docs = Path(tempfile.mkdtemp())
    datasets = {}
    for label, name in SETS.items():
        path = ROOT / "benchmarks/datasets/followup" / name
        for item in path.read_text(encoding="utf-8").splitlines():
            doc = json.loads(item)["doc"]
            if not (docs / doc).exists():
                (docs / doc).symlink_to(CORPUS / doc)
        datasets[label] = path
    loaded = {label: ev.load_dataset(path, docs=docs) for label, path in datasets.items()}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(paths={"knowledge_root": Path(tmp)})
        service = build_service(settings)
        ingest_s = ev.build_knowledge_base(service, next(iter(loaded.values())), "followup")
        results: dict[str, dict[str, dict]] = {}
        for mode in modes:
            service.qa.follow_up = mode
            for label, data in loaded.items():
                results.setdefault(label, {})[mode] = run_mode(service, data.items, not args.no_answers)
                print(mode, label, {k: {kk: vv for kk, vv in v.items() if kk != "rows"}
                                    for k, v in results[label][mode].items()}, flush=True)

    lines = ["| questions | mode | n | retrieval hit@1 | hit@5 | search p50 ms (incl. rewrite) |"
             + ("" if args.no_answers else " answers right | refused | s per answer |"),
             "|---|---|---:|---:|---:|---:|" + ("" if args.no_answers else "---:|---:|---:|")]
    for label, by_mode in results.items():
        for kind in ("follow-up", "topic-switch"):
            for mode, res in by_mode.items():
                r = res[kind]
                row = (f"| {label}, {kind} | {mode} | {r['n']} | {r['hit@1']:.2f} | {r['hit@5']:.2f} | "
                       f"{r['search_p50_ms']:.0f} |")
                if not args.no_answers:
                    row += f" {r['right']} | {r['refused']} | {r['answer_s']:.1f} |"
                lines.append(row)
    examples = []
    if "rewrite" in modes and not args.no_answers:
        for by_mode in results.values():
            for row in by_mode["rewrite"]["follow-up"]["rows"][:4]:
                examples.append(f"- {row['question']} → searched for: {row['query']!r}")
    body = (f"Defaults otherwise (embedding `{settings.embedding.model}`, retrieval `{settings.retrieval.mode}`, "
            f"top_k {settings.retrieval.top_k}, LLM `{settings.llm.model}`, greedy); "
            f"history_turns {settings.retrieval.history_turns}. One knowledge base of the 4 documents "
            f"(ingest {ingest_s:.0f} s). Datasets: `benchmarks/datasets/followup/` (hand-written, 2026-11-26).\n\n"
            + "\n".join(lines) + ("\n\nRewrites (first 4 follow-ups of each set):\n" + "\n".join(examples)
                                  if examples else "") + "\n")
    print(body)
    if not args.no_append:
        append_results("Follow-up questions: off / concat / rewrite", body,
                       "python benchmarks/follow_up.py" + (" --no-answers" if args.no_answers else ""))


if __name__ == "__main__":
    main()
