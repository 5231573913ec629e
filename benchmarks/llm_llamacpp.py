"""kbqa's llamacpp backend against the bare xllamacpp runtime: decode tokens/s and time to first token.

Both run the same loaded model (one ``xllamacpp.Server``), the same prompt and the same greedy settings,
alternating A/B so drift in machine load hits both. "bare" calls ``Server.handle_chat_completions``
directly (non-streaming for throughput, streaming for the first token); "kbqa" consumes
``LlamaCppLLM.stream`` (its only path: ``generate`` is ``stream`` collected).

    python benchmarks/llm_llamacpp.py [--model embedded:qwen2.5-coder-1.5b-instruct] [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time

from _common import append_results, median

from kbqa.bootstrap import resolve_gguf
from kbqa.llm.base import GenerationParams
from kbqa.llm.llamacpp import LlamaCppLLM
from kbqa.schema import ChatMessage
from kbqa.settings import load_settings

PROMPT = ("Write a detailed, step by step explanation of how a hash table handles collisions, "
          "with examples. Use at least ten numbered steps.")


def bare(server: object, req: dict, stream: bool) -> tuple[float, float, int]:
    """(total seconds, first-token seconds, completion tokens) of one bare call."""
    first: list[float] = []
    start = time.perf_counter()
    if stream:
        count = [0]

        def on_chunk(chunk: dict) -> bool:
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    if not first:
                        first.append(time.perf_counter() - start)
                    count[0] += 1
            return False

        server.handle_chat_completions({**req, "stream": True}, on_chunk)  # type: ignore[attr-defined]
        return time.perf_counter() - start, first[0], count[0]
    res = server.handle_chat_completions({**req, "stream": False})  # type: ignore[attr-defined]
    return time.perf_counter() - start, float("nan"), int(res["usage"]["completion_tokens"])


def kbqa(llm: LlamaCppLLM, params: GenerationParams) -> tuple[float, float, str]:
    """(total seconds, first-token seconds, text) of one kbqa stream."""
    first = None
    pieces = []
    start = time.perf_counter()
    for piece in llm.stream([ChatMessage("user", PROMPT)], params):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
    return time.perf_counter() - start, first or float("nan"), "".join(pieces)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=load_settings().llm.model)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    settings = load_settings()
    path = resolve_gguf(args.model, settings.paths.cache_dir)
    llm = LlamaCppLLM(path, args.model, context_window=2048, tokenizer_cache=settings.paths.cache_dir / "tokenizers")
    params = GenerationParams(max_tokens=args.tokens, temperature=0.0, repetition_penalty=1.15)
    req = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.tokens, "temperature": 0.0,
           "top_p": params.top_p, "repeat_penalty": params.repetition_penalty, "seed": params.seed}
    server = llm._server  # the same loaded model for both sides
    kbqa(llm, params)  # warm-up (also fills llama.cpp's prompt cache equally for both sides)

    rows: dict[str, list[float]] = {"bare_tps": [], "kbqa_tps": [], "bare_ttft": [], "kbqa_ttft": []}
    for _ in range(args.rounds):
        # Different seeds would not change greedy output; clearing the prompt cache is done by
        # llama.cpp's slot reuse being identical for both sides (same prompt every call).
        total, _, n = bare(server, req, stream=False)
        rows["bare_tps"].append(n / total)
        total_k, ttft_k, text = kbqa(llm, params)
        n_k = llm.count_tokens(text)
        rows["kbqa_tps"].append(n_k / total_k)
        _, ttft_b, _ = bare(server, req, stream=True)
        rows["bare_ttft"].append(ttft_b)
        rows["kbqa_ttft"].append(ttft_k)
        print(f"round: bare {n} tok {n / total:.1f} tok/s | kbqa {n_k} tok {n_k / total_k:.1f} tok/s "
              f"| ttft bare {ttft_b * 1000:.0f} ms kbqa {ttft_k * 1000:.0f} ms")

    b, k = median(rows["bare_tps"]), median(rows["kbqa_tps"])
    body = (
        f"Model `{args.model}` ({path.name}), prompt of {llm.count_tokens(PROMPT)} tokens, {args.tokens} new tokens, "
        f"greedy, repetition penalty 1.15, {args.rounds} alternating rounds (medians). Tokens/s are whole-call "
        f"rates (prompt processing included, prompt cache warm on both sides).\n\n"
        "| | bare xllamacpp | kbqa llamacpp backend | kbqa / bare |\n|---|---:|---:|---:|\n"
        f"| tokens/s | {b:.1f} | {k:.1f} | {k / b:.3f} |\n"
        f"| time to first token | {median(rows['bare_ttft']) * 1000:.0f} ms | "
        f"{median(rows['kbqa_ttft']) * 1000:.0f} ms | |\n\n"
        f"Target kbqa >= 0.95 of bare: {'met' if k / b >= 0.95 else 'NOT met'}.")
    append_results("LLM throughput: llamacpp backend vs bare xllamacpp", body,
                   "python benchmarks/llm_llamacpp.py " + " ".join(f"--{a} {v}" for a, v in vars(args).items()))


if __name__ == "__main__":
    main()
