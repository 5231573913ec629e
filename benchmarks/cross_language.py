"""Questions in another language than the document: which reach the refusal threshold, and the answers.

Chinese questions over the English State of the Union speech, and English questions over the Chinese
procuratorate rules (``benchmarks/datasets/cross_language``). e5 scores a translation pair below a
same-language match, so the threshold a passage is held to matters here. Side by side, on the same scores:

- ``question's language``: the question's own threshold for every passage (0.85 Chinese, 0.80 otherwise);
- ``lower for another language`` (kbqa's rule): a Chinese question against a passage that is not Chinese is
  held to the lower of the two thresholds.

"Passes" = some top-k passage reaches the threshold, so the model is asked. With ``--answers`` each question
also goes through kbqa's whole pipeline (the current rule, and ``retrieval.translate``: a question that passes
nowhere among passages of the other language is translated by the LLM and searched for again): translated,
answered right (the gold span in the answer, ignoring whitespace, case and thousands separators), refused
(by threshold or by the model), or other. ``--no-translate`` answers without the translation step.

    python benchmarks/cross_language.py [--answers]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from _common import CORPUS, ROOT, append_results

from kbqa import evaluation as ev
from kbqa.bootstrap import build_service
from kbqa.language import is_chinese
from kbqa.settings import load_settings

DATA = ROOT / "benchmarks" / "datasets" / "cross_language"
SETS = [("Chinese questions, English speech", "sotu_questions_zh.jsonl", "state_of_the_union.txt"),
        ("English questions, Chinese rules", "procuratorate_questions_en.jsonl",
         "zh_procuratorate_admin_litigation_supervision_rules.md")]


def norm(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3})", "", ev.squash(text))


def run_set(service, kb: str, path: Path, answers: bool, said: list[str]) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    top_k = service.qa.top_k
    out: dict = {"answerable": 0, "unanswerable": 0, "old": [0, 0], "new": [0, 0], "right": 0, "refused": [0, 0],
                 "translated": [0, 0], "scores": [[], []]}
    for row in rows:
        answerable = row["answer"] is not None
        i = 0 if answerable else 1
        out["answerable" if answerable else "unanswerable"] += 1
        hits = service.search(kb, row["question"], top_k)
        out["scores"][i].append(max(h.score for h in hits))
        q_threshold = service.qa.threshold(row["question"])
        out["old"][i] += any(h.score >= q_threshold for h in hits)
        out["new"][i] += any(h.score >= service.qa.threshold(row["question"], h.text) for h in hits)
        if answers:
            answer = service.ask(kb, row["question"])
            out["refused"][i] += answer.refused
            out["translated"][i] += is_chinese(answer.query) != is_chinese(row["question"])  # searched translated
            if answerable and not answer.refused and norm(row["answer"]) in norm(answer.answer):
                out["right"] += 1
            gold = f" (gold: {row['answer']})" if answerable else ""
            said.append(f"- {'answerable' if answerable else 'unanswerable'}: {row['question']} -> "
                        f"{' '.join(answer.answer.split())[:120]}{gold}")
            print(said[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", action="store_true", help="also answer every question (the LLM; slow)")
    parser.add_argument("--no-translate", action="store_true", help="answer without retrieval.translate")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    lines = ["| questions | answerable | ... pass, question's language | ... pass, lower for another language "
             "| unanswerable | ... pass, question's language | ... pass, lower for another language "
             "| best score answerable (median) / unanswerable (max) |"
             + (" translated (answerable / unanswerable) | right | refused (answerable / unanswerable) |"
                if args.answers else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if args.answers else "")]
    said: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(paths={"knowledge_root": Path(tmp) / "kb"},
                                 retrieval={"translate": not args.no_translate})
        service = build_service(settings)
        for label, name, doc in SETS:
            kb = re.sub(r"\W+", "-", name)
            service.add_files(kb, [CORPUS / doc])
            r = run_set(service, kb, DATA / name, args.answers, said)
            a, u = r["answerable"], r["unanswerable"]
            med = sorted(r["scores"][0])[len(r["scores"][0]) // 2]
            lines.append(f"| {label} | {a} | {r['old'][0]} | {r['new'][0]} | {u} | {r['old'][1]} | {r['new'][1]} "
                         f"| {med:.3f} / {max(r['scores'][1]):.3f} |"
                         + (f" {r['translated'][0]} / {r['translated'][1]} | {r['right']} of {a} "
                            f"| {r['refused'][0]} / {r['refused'][1]} |" if args.answers else ""))
            print(lines[-1], flush=True)
        zh = service.qa.threshold("中文"), service.qa.threshold("English")
        assert is_chinese("中文") and zh[0] >= zh[1]
    body = ("\n".join(lines) + f"\n\nThresholds: {zh[0]:.2f} (Chinese questions), {zh[1]:.2f} (others); top_k "
            f"{settings.retrieval.top_k}, embedding `{settings.embedding.model}`, LLM `{settings.llm.model}`, "
            f"retrieval.translate {str(settings.retrieval.translate).lower()}. "
            "\"right\" counts the gold span verbatim (\"13\" for \"13th\" is not counted): read the answers below.\n"
            + ("\nThe answers (kbqa's rule):\n\n" + "\n".join(said) + "\n" if said else ""))
    if not args.no_append:
        append_results("Questions in another language than the document", body,
                       "python benchmarks/cross_language.py" + (" --answers" if args.answers else "")
                       + (" --no-translate" if args.no_translate else ""))
    else:
        print(body)


if __name__ == "__main__":
    main()
