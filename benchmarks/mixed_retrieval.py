"""Retrieval over a knowledge base of mixed documents: the shared corpus's 15 documents in one knowledge base.

CMRC2018 and the State of the Union each hold one kind of text; a user's knowledge base mixes PDFs, scans, CSV
rows, HTML and prose in two languages, where short CSV rows or a page's cover lines can sit close to many
questions. This builds that knowledge base once (OCR included), then asks ``benchmarks/datasets/corpus``'s 60
questions (31 English, 29 Chinese; 12 cross-language) and the State of the Union set through the real retriever
with several settings side by side: dense, BM25, and hybrid with BM25 weights for non-Chinese questions
(``retrieval.bm25_weight_en``). Retrieval only: no translation, no model. A hit = a retrieved chunk containing
the answer text.

    python benchmarks/mixed_retrieval.py [--weights 0.1,0.25,0.5,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from _common import CORPUS, ROOT, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.language import is_chinese
from kbqa.settings import load_settings

DATASETS = ROOT / "benchmarks" / "datasets"


def flat_corpus(folder: Path) -> Path:
    """Links to the corpus's documents (top level and ``ocr/``, not the datasets) in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted([*CORPUS.glob("*.*"), *(CORPUS / "ocr").glob("*.*")]):
        if path.is_file() and not path.name.startswith(("cmrc2018", "README")) and path.suffix != ".json":
            (folder / path.name).symlink_to(path)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="0.1,0.25,0.5,1,2", help="BM25 weights for non-Chinese questions")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sotu_docs = base / "sotu"
        sotu_docs.mkdir()
        (sotu_docs / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
        sets = {"shared corpus (15 documents)": ev.load_dataset(DATASETS / "corpus" / "corpus_qa.jsonl",
                                                               docs=flat_corpus(base / "docs")),
                "State of the Union": ev.load_dataset(DATASETS / "sotu" / "sotu_qa.jsonl", docs=sotu_docs)}
        service = build_service(load_settings(paths={"knowledge_root": base / "kb"}))
        retriever = service.qa.retriever
        default = retriever.config
        settings = {"dense": dataclasses.replace(default, mode="dense"),
                    "bm25": dataclasses.replace(default, mode="bm25")}
        for w in weights:
            label = f"hybrid, bm25_weight_en {w:g}" + (" (default)" if w == default.bm25_weight_en else "")
            settings[label] = dataclasses.replace(default, mode="hybrid", bm25_weight_en=w)
        table: dict[str, dict[str, dict]] = {label: {} for label in settings}
        notes = []
        for name, data in sets.items():
            start = time.perf_counter()
            ev.build_knowledge_base(service, data, name[:20])
            notes.append(f"{name}: {len(data.items)} questions "
                         f"({sum(not is_chinese(i.question) for i in data.items)} not Chinese), "
                         f"ingest {time.perf_counter() - start:.0f} s")
            for label, config in settings.items():
                retriever.config = config
                for subset, items in (("all", data.items),
                                      ("en", [i for i in data.items if not is_chinese(i.question)])):
                    table[label][f"{name}|{subset}"] = ev.evaluate_retrieval(service, name[:20], items)
        retriever.config = default
    columns = [c for c in table["dense"] if not (c.startswith("State") and c.endswith("|en"))]  # all English
    head = ["setting"] + [f"{c.split('|')[0].split(' (')[0]}{' (English questions)' if c.endswith('|en') else ''} "
                          f"{m}" for c in columns for m in ("hit@1", "hit@5", "mrr@10")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, results in table.items():
        cells = [f"{results[c][m]:.3f}" for c in columns for m in ("hit@1", "hit@5", "mrr@10")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    body = ("Embedded defaults (multilingual-e5-small, int8 chunks; chunks 500/50); BM25 weight 2 for Chinese "
            "questions and questions naming an identifier in every hybrid row; only the weight for other "
            "questions varies. " + "; ".join(notes) + ".\n\n" + "\n".join(lines))
    append_results("Retrieval in a knowledge base of mixed documents", body,
                   f"python benchmarks/mixed_retrieval.py --weights {args.weights}")


if __name__ == "__main__":
    main()
