"""BM25 index benchmark: speed at 1k/10k/100k chunks, and retrieval quality on CMRC2018 dev.

Run from the repository root::

    .venv/bin/python benchmarks/bm25_speed.py              # everything, prints Markdown
    .venv/bin/python benchmarks/bm25_speed.py --append     # ... and appends it to RESULTS.md
    .venv/bin/python benchmarks/bm25_speed.py --sizes 1000 --no-quality

Quality: the 848 CMRC2018 dev contexts cut into 500-character chunks; for each of the 3,219
questions a hit is a top-k chunk cut from the question's own context.

Speed: chunks of 300-500 characters spliced from random sentences of the CMRC contexts and the
State of the Union speech (so every chunk is distinct while term statistics stay realistic).
Sentences are tokenized once and their tokens reused, so the 100k build does not spend minutes in
jieba; tokenizer throughput is measured and reported separately. The base vocabulary is small
(~35k terms), so posting lists are longer than in a real 100k-chunk corpus: latencies are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jieba
import numpy as np
import psutil
import scipy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kbqa.bm25 import FILE_NAME, BM25Index  # noqa: E402
from kbqa.tokenize import tokenize, warm_up  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
CHUNK = 500
Q = TypeVar("Q")
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")


def load_cmrc() -> tuple[list[str], list[tuple[str, int]]]:
    """Return the contexts and (question, context index) pairs of CMRC2018 dev."""
    data = json.loads((CORPUS / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    contexts: list[str] = []
    questions: list[tuple[str, int]] = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append((qa["question"], len(contexts)))
            contexts.append(paragraph["context"])
    return contexts, questions


def bigrams(text: str) -> list[str]:
    """Baseline without jieba: Han characters and Han bigrams, plus ``tokenize``'s other words."""
    out = tokenize(_HAN_RUN.sub(" ", text))
    for run in _HAN_RUN.findall(text.lower()):
        out.extend(run)
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


VARIANTS: dict[str, Callable[[str], list[str]]] = {
    "jieba.cut, HMM, no stopwords (plain)":
        lambda t: tokenize(t, search_mode=False, hmm=True, stopwords=False),
    "jieba.cut, HMM + stopwords": lambda t: tokenize(t, search_mode=False, hmm=True),
    "jieba.cut, no HMM + stopwords": lambda t: tokenize(t, search_mode=False, hmm=False),
    "cut_for_search, HMM, no stopwords": lambda t: tokenize(t, hmm=True, stopwords=False),
    "cut_for_search, HMM + stopwords": lambda t: tokenize(t, hmm=True),
    "cut_for_search, no HMM, no stopwords": lambda t: tokenize(t, hmm=False, stopwords=False),
    "**cut_for_search, no HMM + stopwords (default)**": tokenize,
    "default, repeated query terms counted once": lambda t: list(dict.fromkeys(tokenize(t))),
    "char unigrams + bigrams (no jieba)": bigrams,
}


def quality(rows: list[str]) -> None:
    """Evaluate each tokenizer variant on CMRC2018 dev and add table rows."""
    contexts, questions = load_cmrc()
    chunks = [(c[i : i + CHUNK], n) for n, c in enumerate(contexts) for i in range(0, len(c), CHUNK)]
    n_chars = sum(len(text) for text, _ in chunks)
    for name, tok in VARIANTS.items():
        started = time.perf_counter()
        chunk_tokens = [tok(text) for text, _ in chunks]
        rate = n_chars / (time.perf_counter() - started)
        index = BM25Index()
        index.add_tokens([str(i) for i in range(len(chunks))], chunk_tokens)
        hit1 = hit5 = rr = 0.0
        for question, gold in questions:
            ranked = [chunks[int(i)][1] for i, _ in index.search_tokens(tok(question), 10)]
            rank = ranked.index(gold) + 1 if gold in ranked else 0
            hit1 += rank == 1
            hit5 += 0 < rank <= 5
            rr += 1 / rank if rank else 0.0
        n = len(questions)
        rows.append(f"| {name} | {hit1 / n:.3f} | {hit5 / n:.3f} | {rr / n:.3f} | {rate / 1000:.0f}k |")
        print(rows[-1], flush=True)


def sentence_pool() -> tuple[list[str], list[list[str]], list[str]]:
    """Split the base texts into sentences, tokenized once; also return query strings."""
    contexts, questions = load_cmrc()
    speech = (CORPUS / "state_of_the_union.txt").read_text(encoding="utf-8")
    splitter = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n+")
    sentences = [s for text in [*contexts, speech] for s in splitter.split(text) if s and s.strip()]
    english = ["How many projects have been announced?", "4,000 projects", "inflation and lower costs",
               "What did the president say about Ketanji Brown Jackson", "Ukraine sanctions Russia"]
    return sentences, [tokenize(s) for s in sentences], [q for q, _ in questions] + english * 20


def synthetic(n: int, sentences: list[str], tokens: list[list[str]], seed: int) -> tuple[list[str], list]:
    """Build n distinct chunks of 300-500 characters from random sentences: (texts, token lists)."""
    rng = random.Random(seed)
    texts, token_lists = [], []
    for _ in range(n):
        target, size, picked = rng.randint(300, 500), 0, []
        while size < target:
            i = rng.randrange(len(sentences))
            picked.append(i)
            size += len(sentences[i])
        texts.append("".join(sentences[i] for i in picked))
        token_lists.append([t for i in picked for t in tokens[i]])
    return texts, token_lists


class Stopwatch:
    """``with watch("name"): ...`` records the block's wall time in seconds under that name."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}
        self._name, self._started = "", 0.0

    def __call__(self, name: str) -> Stopwatch:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.s[self._name] = time.perf_counter() - self._started


def latencies(fn: Callable[[Q], object], queries: list[Q]) -> tuple[float, float]:
    """Return (p50, p95) in milliseconds of fn over the queries."""
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def speed_row(n: int, sentences: list[str], sentence_tokens: list[list[str]], queries: list[str]) -> str:
    """Build an n-chunk index, measure it, and return its Markdown table row."""
    texts, token_lists = synthetic(n, sentences, sentence_tokens, seed=n)
    ids = [f"doc{i // 10}:{i % 10}" for i in range(n)]  # ten chunks per "document"
    process, watch = psutil.Process(), Stopwatch()
    rss0 = process.memory_info().rss
    index = BM25Index()
    with watch("add"):
        index.add_tokens(ids, token_lists)
    with watch("build"):
        index.search_tokens(["x"], 1)
    rss = (process.memory_info().rss - rss0) / 2**20
    p50, p95 = latencies(lambda q: index.search(q, 20), queries)
    pre_p50, _ = latencies(lambda q: index.search_tokens(q, 20), [tokenize(q) for q in queries])
    with watch("add_doc"):
        index.add([f"new:{i}" for i in range(10)], texts[:10])
    with watch("rebuild_add"):
        index.search_tokens(["x"], 1)
    with watch("delete_doc"):
        index.delete(f"doc{n // 20}:{j}" for j in range(10))
    with watch("rebuild_delete"):
        index.search_tokens(["x"], 1)
    with tempfile.TemporaryDirectory() as folder:
        index.folder = Path(folder)
        with watch("save"):
            index.save()
        size_mb = (Path(folder) / FILE_NAME).stat().st_size / 2**20
        with watch("open"):
            reopened = BM25Index.open(Path(folder))
        with watch("first"):
            reopened.search_tokens(["x"], 1)
    text_rate = "-"
    if n <= 10_000:  # the real path, jieba included
        with watch("text"):
            BM25Index().add(ids, texts)
        text_rate = f"{n / watch.s['text']:,.0f}"
    t = watch.s
    return (f"| {n:,} | {len(index._rows) / 1e6:.1f}M | {len(index._vocab) / 1000:.0f}k | {t['add']:.2f} s "
            f"| {t['build']:.2f} s | {text_rate} | {p50:.2f} / {p95:.2f} ms | {pre_p50:.2f} ms "
            f"| {t['add_doc'] * 1000:.0f} ms + {t['rebuild_add']:.2f} s "
            f"| {t['delete_doc'] * 1000:.2f} ms + {t['rebuild_delete']:.2f} s "
            f"| {t['save']:.2f} s, {size_mb:.0f} MB | {t['open']:.2f} s + {t['first']:.2f} s "
            f"| {rss:.0f} MB |")


def speed(sizes: list[int], rows: list[str]) -> None:
    """Measure build, rebuild, search, save/open and memory at each size and add table rows."""
    started = time.perf_counter()
    sentences, sentence_tokens, queries = sentence_pool()
    print(f"tokenized {sum(map(len, sentences))} chars in {time.perf_counter() - started:.1f}s", flush=True)
    queries = random.Random(1).sample(queries, min(1000, len(queries)))
    for n in sizes:
        rows.append(speed_row(n, sentences, sentence_tokens, queries))
        print(rows[-1], flush=True)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0))
    return (f"{cpu} ({cpu_mhz()}), {cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
            f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, jieba "
            f"{jieba.__version__}; load average at start {os.getloadavg()[0]:.1f}")


def cpu_mhz() -> str:
    mhz = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("cpu MHz")]
    return f"{float(mhz[0]):.0f} MHz" if mhz else "clock unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    warm_up()
    out = ["## BM25 index: speed and quality", "",
           f"Machine: {machine()}. Made by `python benchmarks/bm25_speed.py`.", ""]
    if args.sizes:
        out += ["Speed (synthetic chunks of 300-500 chars; queries: 1,000 CMRC questions + English; k=20). "
                "*add* = `add_tokens` (jieba excluded), *build* = first search after it; *text add* = "
                "`add()` with jieba, chunks/s; *search* = `search()` incl. query tokenization, p50 / p95; "
                "*+1 doc* = `add()` of 10 chunks (jieba included), *-1 doc* = `delete()` of 10 chunks, each "
                "followed by the rebuild the next search pays; "
                "*open* = `open()` + first search; *RSS* = process growth after build.", "",
                "| chunks | postings | terms | add | build | text add | search p50 / p95 | search, "
                "pre-tokenized p50 | +1 doc | -1 doc | save, file | open | RSS |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        speed(args.sizes, out)
        out.append("")
    if not args.no_quality:
        out += ["Quality on CMRC2018 dev (848 contexts in 500-char chunks, 3,219 questions; a hit = a top-k "
                "chunk from the gold context; MRR over the top 10; tokenizer chars/s on 1 core):", "",
                "| tokenizer | hit@1 | hit@5 | MRR@10 | chars/s |", "|---|---:|---:|---:|---:|"]
        quality(out)
        out.append("")
    text = "\n".join(out) + "\n"
    print(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
