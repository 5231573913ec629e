"""Barely relevant passages in the question's language: search in translation too, or not.

In a knowledge base of both languages, a question can pass the refusal threshold on a passage of its own
language that is barely relevant (a PDF's cover page at 0.801 against English's 0.80) while the passage that
answers it is in the other language, found only once the question is translated. kbqa translates a question
that nothing passes; ``weak_margin`` (``kbqa.qa._WEAK_MARGIN``) also translates one whose passing passages are
all in its own language and pass by less than the margin, and keeps the best of both searches by score.

This builds the shared corpus's 15 documents into one knowledge base (OCR included) and runs
``benchmarks/datasets/corpus``'s 60 questions through ``QAEngine.find`` (retrieval, the refusal threshold and
the translation step with the embedded LLM; no answer is written), with the margin at 0 (the rule off) and at
kbqa's default, side by side. A hit = a passage given to the model contains the gold answer text. Each
question's translation is made once and used by both runs.

    python benchmarks/weak_translate.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, append_results
from mixed_retrieval import flat_corpus

from kbqa import evaluation as ev
from kbqa import qa as qa_module
from kbqa.bootstrap import build_service
from kbqa.language import is_chinese
from kbqa.settings import load_settings

DATASETS = ROOT / "benchmarks" / "datasets"


def main() -> None:
    margins = {"off (margin 0)": 0.0, f"kbqa (margin {qa_module._WEAK_MARGIN:g})": qa_module._WEAK_MARGIN}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = ev.load_dataset(DATASETS / "corpus" / "corpus_qa.jsonl", docs=flat_corpus(base / "docs"))
        service = build_service(load_settings(paths={"knowledge_root": base / "kb"}))
        start = time.perf_counter()
        ev.build_knowledge_base(service, data, "corpus")
        ingest = time.perf_counter() - start
        kb = service.root.open("corpus")
        engine = service.qa
        translate = engine._translation
        made: dict[str, str | None] = {}

        def once(query: str) -> str | None:  # the same translation for both runs
            if query not in made:
                made[query] = translate(query)
            return made[query]

        engine._translation = once  # type: ignore[method-assign]
        rows: dict[str, dict[str, Any]] = {}
        changed: list[str] = []
        for label, margin in margins.items():
            out = rows[label] = {"hit": 0, "refused": 0, "translated": 0, "also": 0, "seconds": 0.0}
            for item in data.items:
                notes: dict[str, Any] = {}
                timings: dict[str, float] = {}
                passed = engine.find(kb, item.question, timings, notes, weak_margin=margin)
                out["hit"] += any(ev.is_hit(c, item) for c in passed)
                out["refused"] += not passed
                out["translated"] += "translated" in notes
                out["also"] += "also_translated" in notes
                out["seconds"] += sum(timings.values())
                if margin and "also_translated" in notes:
                    changed.append(f"- {item.question} (gold: {item.answers[0]}) -> also searched for "
                                   f"“{notes['also_translated']}”; sources: "
                                   + ", ".join(f"{c.source} {c.score:.3f}{' (hit)' if ev.is_hit(c, item) else ''}"
                                               for c in passed))
    n = len(data.items)
    lines = ["| rule | questions | hit among the passages given (top_k 3) | refused | translated (nothing passed) "
             "| also searched in translation (barely relevant) | retrieval + translation seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, out in rows.items():
        lines.append(f"| {label} | {n} | {out['hit']} | {out['refused']} | {out['translated']} | {out['also']} "
                     f"| {out['seconds']:.0f} |")
    english = sum(not is_chinese(i.question) for i in data.items)
    body = (f"Embedded defaults (multilingual-e5-small, int8 chunks; qwen2.5-coder-1.5b-instruct translating); "
            f"{n} questions ({english} not Chinese) over the 15 documents, ingest {ingest:.0f} s.\n\n"
            + "\n".join(lines) + "\n\nQuestions also searched in translation:\n\n" + ("\n".join(changed) or "- none"))
    append_results("Barely relevant passages: also searched in translation", body,
                   "python benchmarks/weak_translate.py")


if __name__ == "__main__":
    main()
