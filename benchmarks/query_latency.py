"""Retrieval latency at 1k, 10k and 100k chunks (dense, BM25, hybrid), and the share of an answer's time
spent outside the LLM.

Knowledge bases of N chunks are filled directly (store + keyword index + manifest), with real CMRC2018
chunk texts repeated to reach N and random unit vectors (embedding 100k chunks would take hours here;
random vectors are a hard case for the HNSW index, so dense latency is if anything pessimistic). Each
search embeds the question for real with the configured model, as ``KBQAService.search`` does.

    python benchmarks/query_latency.py [--sizes 1000,10000,100000] [--queries 200] [--answers 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import CORPUS, Timer, append_results, cmrc_contexts, percentile_ms

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.schema import Chunk
from kbqa.settings import load_settings
from kbqa.splitter import Splitter


def fill(service, name: str, texts: list[str], n: int, dim: int) -> None:
    """A knowledge base of ``n`` chunks cycling through ``texts``, with random unit vectors."""
    kb = service.root.create(name)
    kb.set_embedding(service.ingestor.embedder.name)
    rng = np.random.default_rng(0)
    index = service.keywords.get(kb)
    step = 5000
    for start in range(0, n, step):
        ids = range(start, min(n, start + step))
        chunks = [Chunk(id=f"synthetic:{i}", text=texts[i % len(texts)], source=f"doc{i // 50}.txt",
                        sha256="synthetic", index=i) for i in ids]
        vectors = rng.standard_normal((len(chunks), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        service.store.add(kb.slug, chunks, vectors)
        index.add([c.id for c in chunks], [c.text for c in chunks])
    kb.commit_file("synthetic.txt", "synthetic", n, None, 0)
    index.generation = kb.manifest.generation
    index.save()


def search_latency(service, kb: str, questions: list[str], mode: str) -> tuple[float, float]:
    base = service.qa.retriever.config
    service.qa.retriever.config = replace(base, mode=mode)
    service.search(kb, questions[0], 3)  # warm-up (opens indexes)
    times = []
    for q in questions:
        start = time.perf_counter()
        service.search(kb, q, 3)
        times.append(time.perf_counter() - start)
    service.qa.retriever.config = base
    return percentile_ms(times, 50), percentile_ms(times, 95)


class TimedLLM:
    """Wraps the real LLM and adds up the seconds spent inside it."""

    def __init__(self, llm) -> None:
        self.llm = llm
        self.name = llm.name
        self.context_window = llm.context_window
        self.seconds = 0.0

    def count_tokens(self, text: str) -> int:
        return self.llm.count_tokens(text)

    def generate(self, messages, params=None) -> str:
        return "".join(self.stream(messages, params))

    def stream(self, messages, params=None, usage=None):
        start = time.perf_counter()
        try:
            for piece in self.llm.stream(messages, params, usage):
                self.seconds += time.perf_counter() - start
                yield piece
                start = time.perf_counter()
        finally:
            self.seconds += time.perf_counter() - start


def answer_share(n_answers: int) -> str:
    """Time outside the LLM as a share of whole answers, on the State of the Union."""
    from kbqa.bootstrap import build_llm

    settings = load_settings()
    timed = TimedLLM(build_llm(settings.llm, settings.paths.cache_dir))
    with tempfile.TemporaryDirectory() as tmp:
        service = build_service(load_settings(paths={"knowledge_root": Path(tmp)}), llm=lambda: timed)
        service.add_files("sotu", [CORPUS / "state_of_the_union.txt"])
        items = [i for i in ev.load_dataset(Path(__file__).parent / "datasets/sotu/sotu_qa.jsonl",
                                            docs=CORPUS).items if i.answerable][:n_answers]
        service.ask("sotu", items[0].question)  # warm-up: model load
        totals, outside = [], []
        for item in items:
            timed.seconds = 0.0
            with Timer() as t:
                service.ask("sotu", item.question)
            totals.append(t.seconds)
            outside.append(t.seconds - timed.seconds)
    share = sum(outside) / sum(totals)
    return (f"Whole answers ({n_answers} State of the Union questions, `{settings.llm.model}`, "
            f"{settings.retrieval.mode} retrieval): median answer {np.median(totals):.1f} s, of which outside the "
            f"LLM (question embedding, retrieval, prompt building, chain overhead) median "
            f"{np.median(outside) * 1000:.0f} ms: "
            f"**{share:.1%}** of the answer time (target <= 10%).")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--answers", type=int, default=6)
    args = parser.parse_args()

    settings = load_settings()
    splitter = Splitter(settings.splitter.chunk_size, settings.splitter.chunk_overlap)
    texts = [c for _, t in cmrc_contexts() for c in splitter.split_text(t)]
    data = ev.load_dataset(CORPUS / "cmrc2018_dev.json")
    questions = [i.question for i in ev.sample(data.items, args.queries)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        service = build_service(load_settings(paths={"knowledge_root": Path(tmp)}))
        dim = int(service.ingestor.embedder.dim)
        for n in (int(s) for s in args.sizes.split(",")):
            with Timer() as t:
                fill(service, f"n{n}", texts, n, dim)
            cells = [search_latency(service, f"n{n}", questions, mode) for mode in ("dense", "bm25", "hybrid")]
            rows.append((n, t.seconds, cells))
            print(rows[-1], flush=True)
    table = ["| chunks | fill (s) | dense p50 / p95 ms | BM25 p50 / p95 ms | hybrid p50 / p95 ms |",
             "|---:|---:|---:|---:|---:|"]
    for n, fill_s, cells in rows:
        table.append(f"| {n:,} | {fill_s:.0f} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in cells) + " |")
    hybrid_100k = next((c[2][0] for n, _, c in rows if n == 100_000), None)
    body = (f"Embedding model `{settings.embedding.model}` (question encoded for real each time), top_k 3, "
            f"{settings.retrieval.candidates} candidates per retriever, {args.queries} CMRC questions per cell.\n\n"
            + "\n".join(table) + "\n\n"
            + (f"Hybrid p50 at 100k chunks: {hybrid_100k:.1f} ms (target <= 50 ms).\n\n" if hybrid_100k else "")
            + (answer_share(args.answers) if args.answers else ""))
    append_results("Query latency", body, f"python benchmarks/query_latency.py --sizes {args.sizes} "
                   f"--queries {args.queries} --answers {args.answers}")


if __name__ == "__main__":
    main()
