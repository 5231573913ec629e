"""Embedding batch size: encoding throughput of kbqa's embedder at several batch sizes.

Run from the repository root::

    .venv/bin/python benchmarks/embed_batch.py                 # 256 chunks, batches 4, 8, 16, 32
    .venv/bin/python benchmarks/embed_batch.py --chunks 64 --sizes 8,32

Chunks are kbqa's own 500/50 splits of CMRC2018 dev contexts, encoded as passages through
``Text2VecEmbedder`` (text2vec sorts each call's texts by length before batching). Sizes run in
alternating order over two rounds; the table gives each size's better round. Also checks that the
vectors do not depend on the batch size (padding is masked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Timer, append_results, cmrc_contexts

from kbqa.embeddings import build_embedder
from kbqa.settings import load_settings
from kbqa.splitter import Splitter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--sizes", default="4,8,16,32")
    parser.add_argument("--model", default=load_settings().embedding.model)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    settings = load_settings(embedding={"model": args.model})
    splitter = Splitter(settings.splitter.chunk_size, settings.splitter.chunk_overlap)
    chunks: list[str] = []
    for _, text in cmrc_contexts(None):
        chunks.extend(splitter.split_text(text))
        if len(chunks) >= args.chunks:
            break
    chunks = chunks[:args.chunks]
    embedder = build_embedder(settings.embedding, Path(settings.paths.cache_dir))
    model = getattr(embedder, "model", embedder)
    tokenizer = model._model.tokenizer
    tokens = sum(len(ids) for ids in tokenizer([model.profile.passage_prefix + c for c in chunks],
                                                truncation=True, max_length=512)["input_ids"])
    model.embed_documents(chunks[:8])  # warm-up

    best: dict[int, float] = {}
    vectors: dict[int, np.ndarray] = {}
    for rnd in range(2):
        for size in (sizes if rnd == 0 else list(reversed(sizes))):
            model.batch_size = size
            with Timer() as t:
                vectors[size] = np.asarray(model.embed_documents(chunks))
            best[size] = min(best.get(size, float("inf")), t.seconds)
    ref = vectors[sizes[-1]]
    rows = "\n".join(
        f"| {s} | {best[s]:.1f} | {len(chunks) / best[s]:.2f} | {tokens / best[s]:,.0f} | "
        f"{best[sizes[-1]] / best[s]:.2f}x | {float((vectors[s] * ref).sum(1).min()):.6f} |" for s in sizes)
    body = (f"Model `{args.model}`, {len(chunks)} chunks of CMRC2018 dev ({tokens:,} tokens with the `passage:` "
            f"prefix), best of 2 alternating rounds.\n\n"
            f"| batch | seconds | chunks/s | tokens/s | vs batch {sizes[-1]} | min cosine vs batch {sizes[-1]} |\n"
            f"|---:|---:|---:|---:|---:|---:|\n{rows}\n")
    append_results("Embedding batch size", body,
                   f"python benchmarks/embed_batch.py --chunks {args.chunks} --sizes {args.sizes}")


if __name__ == "__main__":
    main()
