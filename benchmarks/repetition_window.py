"""The transformers backend's repetition penalty: over the last 64 tokens (kbqa) or over the whole prompt.

transformers' own ``repetition_penalty`` weighs every token of the prompt, so the passages' words, which a RAG
answer should copy, count against it; llama.cpp (the default backend) weighs the last 64 tokens only, and kbqa's
transformers backend now does the same (``RecentRepetitionPenalty``). This runs ``kbqa eval`` on the State of the
Union set and a fixed CMRC2018 sample with the transformers backend, once as kbqa runs it and once with
transformers' whole-prompt penalty, side by side (same model, settings, questions; penalty 1.15, greedy).

    python benchmarks/repetition_window.py [--model embedded:qwen2.5-coder-0.5b-instruct] [--cmrc 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import CORPUS, ROOT, append_results


def run_eval(variant: str, argv: list[str]) -> int:
    """``kbqa eval`` in this process, with the whole-prompt penalty patched in for ``variant == "whole"``."""
    from kbqa import cli
    from kbqa.llm import transformers_backend as backend

    if variant == "whole":
        ours = backend.generation_kwargs

        def whole_prompt(params, eos, pad):  # type: ignore[no-untyped-def]
            kwargs = ours(params, eos, pad)
            if kwargs.pop("logits_processor", None) is not None:
                kwargs["repetition_penalty"] = params.repetition_penalty
            return kwargs
        backend.generation_kwargs = whole_prompt
    return cli.main(argv)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":  # the child process
        sys.exit(run_eval(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--cmrc", type=int, default=40, help="CMRC2018 questions answered (a fixed sample)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sotu = Path(tmp) / "sotu"
        sotu.mkdir()
        (sotu / "state_of_the_union.txt").symlink_to(CORPUS / "state_of_the_union.txt")
        datasets = {"State of the Union (24 answerable, 8 not)":
                    ["--dataset", str(ROOT / "benchmarks/datasets/sotu/sotu_qa.jsonl"), "--docs", str(sotu)],
                    f"CMRC2018 dev ({args.cmrc} sampled)":
                    ["--dataset", str(CORPUS / "cmrc2018_dev.json"), "--limit", str(args.cmrc)]}
        env = {**os.environ, "KBQA_LLM__BACKEND": "transformers", "KBQA_LLM__MODEL": args.model}
        for name, dataset in datasets.items():
            for variant, label in (("window", "last 64 tokens (kbqa)"), ("whole", "whole prompt (transformers)")):
                env["KBQA_PATHS__KNOWLEDGE_ROOT"] = str(Path(tmp) / f"kb-{variant}")
                out = subprocess.run([sys.executable, __file__, "--variant", variant, "eval", *dataset, "--json"],
                                     env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
                r = json.loads(out)

                def fmt(v: float | None) -> str:
                    return "-" if v is None else f"{v:.3f}"
                rows.append(f"| {name} | {label} | {fmt(r['exact_match'])} | {fmt(r['f1'])} | "
                            f"{fmt(r['refusal_rate_answerable'])} | {fmt(r['refusal_rate_unanswerable'])} |")
                print(rows[-1], flush=True)
    body = (f"LLM `{args.model}` through the `transformers` backend (dtype auto: fp32 on this CPU), greedy, "
            "repetition penalty 1.15, top_k 3, the embedded embedding model; the same questions for both rows of "
            "a dataset.\n\n| dataset | penalty over | exact match | F1 | refused, answerable | refused, unanswerable |"
            "\n|---|---|---:|---:|---:|---:|\n" + "\n".join(rows))
    append_results("Repetition penalty window (transformers backend)", body,
                   f"python benchmarks/repetition_window.py --model {args.model} --cmrc {args.cmrc}")


if __name__ == "__main__":
    main()
