"""Cost growth: ingest time and peak memory at 1x, 4x and 16x a corpus; is the growth linear?

Each size runs in a fresh subprocess (so peak memory is its own): ingest of the first N CMRC2018 dev
contexts (1x = 53 contexts, 16x = all 848) into an empty knowledge base, with the default settings.

    python benchmarks/cost_growth.py [--base 53]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import append_results

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from _common import cmrc_contexts, peak_rss_mb
from kbqa.bootstrap import build_service
from kbqa.settings import load_settings
contexts = cmrc_contexts({n})
with tempfile.TemporaryDirectory() as tmp:
    files = []
    for name, text in contexts:
        (Path(tmp) / name).write_text(text, encoding="utf-8"); files.append(Path(tmp) / name)
    service = build_service(load_settings(paths={{"knowledge_root": Path(tmp) / "kb"}}))
    service.ingestor.embedder.embed_documents(["warm-up"])
    base_rss = peak_rss_mb()
    start = time.perf_counter()
    report = service.add_files("growth", files)
    seconds = time.perf_counter() - start
    assert report.ok
    print(json.dumps({{"n": {n}, "chars": sum(len(t) for _, t in contexts), "chunks": report.chunks_added,
                      "seconds": seconds, "rss_before": base_rss, "rss_peak": peak_rss_mb()}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=int, default=53, help="contexts at 1x (16x must be <= 848)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    rows = []
    for factor in (1, 4, 16):
        code = CHILD.format(root=str(root), bench=str(root / "benchmarks"), n=args.base * factor)
        with tempfile.TemporaryDirectory():
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append({"factor": factor, **json.loads(out.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    first = rows[0]
    lines = ["| size | contexts | characters | chunks | ingest s | s per 1k chars | peak RSS MB | RSS growth MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per_k = r["seconds"] / r["chars"] * 1000
        lines.append(f"| {r['factor']}x | {r['n']} | {r['chars']:,} | {r['chunks']} | {r['seconds']:.1f} | "
                     f"{per_k:.3f} | {r['rss_peak']:.0f} | {r['rss_peak'] - r['rss_before']:.0f} |")
    per_char = [r["seconds"] / r["chars"] for r in rows]
    drift = per_char[-1] / per_char[0]
    mem = (rows[-1]["rss_peak"] - rows[-1]["rss_before"]) / max(first["rss_peak"] - first["rss_before"], 1)
    verdict = ("linear (within noise)" if 0.8 <= drift <= 1.25 else "super-linear" if drift > 1.25
               else "sub-linear: cheaper per character at scale")
    body = ("\n".join(lines) + "\n\n"
            f"- Time per character at 16x is {drift:.2f}x that at 1x: "
            f"{verdict}.\n"
            f"- Memory growth during ingest at 16x is {mem:.1f}x that at 1x (the model itself is loaded before "
            f"the measurement starts; the growth is chunks in flight, Chroma and the keyword index).\n")
    append_results("Cost growth: ingest at 1x, 4x, 16x", body, f"python benchmarks/cost_growth.py --base {args.base}")


if __name__ == "__main__":
    main()
