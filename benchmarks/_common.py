"""Helpers shared by the benchmark scripts: machine description, timing, appending to RESULTS.md."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line: CPU model, cores, memory, load, Python and torch versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        torch_v = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_v = ""
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}{torch_v}; "
            f"load average {load:.1f} at start; {datetime.now(UTC):%Y-%m-%d}")


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, as milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx] * 1000


def median(values: list[float]) -> float:
    """Median of a list (nan when empty)."""
    return statistics.median(values) if values else float("nan")


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def append_results(title: str, body: str, command: str) -> None:
    """Append a section to benchmarks/RESULTS.md and echo it."""
    section = f"\n## {title}\n\nMachine: {machine()}. Made by `{command}`.\n\n{body.rstrip()}\n"
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write(section)
    print(section)


def cmrc_contexts(limit: int | None = None) -> list[tuple[str, str]]:
    """CMRC2018 dev contexts as ``(file name, text)``, named as ``kbqa eval`` names them (``context-00001.txt``:
    names that give their chunks no title, so the figures compare with those before titles)."""
    import json

    data = json.loads((CORPUS / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    out = [(f"context-{i + 1:05d}.txt", p["context"]) for i, p in
           enumerate(p for a in data["data"] for p in a["paragraphs"])]
    return out[:limit] if limit else out
