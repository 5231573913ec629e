"""Tokens per second of kbqa's transformers backend against a bare ``model.generate``, side by side.

Both run the same model on the same prompt ids with the same greedy settings and the same number of
new tokens (stop tokens are ignored so every run is ``--new-tokens`` long). Runs alternate between the
two (the order flips every round) and medians are reported, with time to first token: for kbqa, from
the ``stream`` call to the first generated token (prompt formatting included); for the bare loop, a
``generate`` of one token.

Models:
  --model SPEC         anything ``llm.model`` accepts (default: embedded:smollm2-135m-instruct).
  --shape NAME         a ChatGLM2-shaped GlmForCausalLM with random weights (chatglm2-small for CPUs,
                       chatglm2-6b for GPUs), with ChatGLM's tokenizer and prompt format.
On CUDA the report adds the memory-bandwidth bound: bytes of weights read per token vs the GPU's
bandwidth (``--bandwidth-gbs`` or a table of known GPUs).

    python benchmarks/llm_throughput.py                                  # CPU: SmolLM2 and chatglm2-small
    python benchmarks/llm_throughput.py --device cuda --shape chatglm2-6b --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbqa.llm.base import GenerationParams  # noqa: E402
from kbqa.llm.chatglm import ChatGLMCodec, ChatGLMTokenizer  # noqa: E402
from kbqa.llm.chatglm.convert import native_config  # noqa: E402
from kbqa.llm.transformers_backend import (  # noqa: E402
    TransformersLLM,
    build_transformers_llm,
    generation_kwargs,
)
from kbqa.schema import ChatMessage  # noqa: E402
from kbqa.settings import LLMSettings  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # The published ChatGLM2-6B / ChatGLM3-6B shapes (MODELS.md).
    "chatglm2-6b": {"hidden_size": 4096, "ffn_hidden_size": 13696, "num_layers": 28,
                    "num_attention_heads": 32, "multi_query_group_num": 2, "kv_channels": 128,
                    "padded_vocab_size": 65024},
    # Same layout, small enough for a 2-core CPU (about 200M parameters, mostly the 65k vocabulary).
    "chatglm2-small": {"hidden_size": 1024, "ffn_hidden_size": 2736, "num_layers": 6,
                       "num_attention_heads": 8, "multi_query_group_num": 2, "kv_channels": 128,
                       "padded_vocab_size": 65024},
}
#: Peak memory bandwidth in GB/s by GPU name fragment (vendor figures).
BANDWIDTH_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900,
                 "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "L40S": 864,
                 "L4": 300, "A10": 600, "RTX 4090": 1008, "RTX 3090": 936, "T4": 320}
PROMPT = ("Below is a long passage about rivers, mountains and cities. Read it and then write a detailed, "
          "multi-paragraph summary. 长江是亚洲最长的河流，流经多个省份，最终注入东海。" * 3)


def random_chatglm(shape: str, device: str, dtype: torch.dtype, workdir: Path) -> TransformersLLM:
    """A ChatGLM2-shaped native model with random weights, ChatGLM's prompt format, a small tokenizer."""
    import io

    import sentencepiece as spm
    from transformers import GlmForCausalLM

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter([PROMPT] * 50), model_writer=buffer,
                                   vocab_size=600, model_type="bpe", byte_fallback=True, minloglevel=2,
                                   hard_vocab_limit=False)
    (workdir / "tokenizer.model").write_bytes(buffer.getvalue())
    tokenizer = ChatGLMTokenizer(workdir / "tokenizer.model", "chatglm2")
    config = native_config({**SHAPES[shape], "multi_query_attention": True, "seq_length": 32768,
                            "layernorm_epsilon": 1e-5, "torch_dtype": "bfloat16"}, [tokenizer.eos_id], False)
    torch.manual_seed(0)
    with torch.device(device):
        model = GlmForCausalLM._from_config(config, dtype=dtype).eval()
    codec = ChatGLMCodec(tokenizer, [tokenizer.eos_id])
    return TransformersLLM(model, codec, name=shape, context_window=4096)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(llm: TransformersLLM, new_tokens: int, rounds: int, device: str) -> dict[str, Any]:
    """Alternate bare ``generate`` and kbqa's stream; medians of tok/s and time to first token."""
    messages = [ChatMessage("user", PROMPT)]
    params = GenerationParams(max_tokens=new_tokens, temperature=0.0, repetition_penalty=1.15)
    # Stop tokens are ignored on both sides so that every run makes exactly new_tokens tokens.
    llm.stop_token_ids = ()
    llm.model.generation_config.eos_token_id = None
    prompt = llm.prompt_ids(messages, new_tokens)
    input_ids = torch.tensor([prompt], device=llm.model.device)
    kwargs = generation_kwargs(params, (), llm.codec.pad_token_id)

    def bare(max_new: int) -> tuple[float, int]:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = llm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     **{**kwargs, "max_new_tokens": max_new})
        sync(device)
        return time.perf_counter() - start, out.shape[1] - len(prompt)

    def kbqa() -> tuple[float, int, float]:
        start = time.perf_counter()
        for _ in llm.stream(messages, params):
            pass
        usage = llm.last_usage
        return time.perf_counter() - start, usage.completion_tokens, usage.first_token_seconds or 0.0

    bare(4), kbqa()  # warm up both paths
    rows: dict[str, list[float]] = {"bare_tps": [], "kbqa_tps": [], "bare_ttft": [], "kbqa_ttft": []}
    for round_ in range(rounds):
        for side in (("bare", "kbqa") if round_ % 2 == 0 else ("kbqa", "bare")):
            if side == "bare":
                seconds, tokens = bare(new_tokens)
                rows["bare_tps"].append(tokens / seconds)
                rows["bare_ttft"].append(bare(1)[0])
            else:
                seconds, tokens, ttft = kbqa()
                rows["kbqa_tps"].append(tokens / seconds)
                rows["kbqa_ttft"].append(ttft)
            if tokens != new_tokens:
                raise RuntimeError(f"{side} made {tokens} tokens, expected {new_tokens}")
    result: dict[str, Any] = {k: statistics.median(v) for k, v in rows.items()}
    result["ratio"] = result["kbqa_tps"] / result["bare_tps"]
    result["ratios_per_round"] = [k / b for k, b in zip(rows["kbqa_tps"], rows["bare_tps"], strict=True)]
    result["prompt_tokens"], result["new_tokens"] = len(prompt), new_tokens
    return result


def bandwidth_bound(llm: TransformersLLM, tps: float, bandwidth_gbs: float | None) -> dict[str, Any]:
    """Bytes of weights read per token (all but the input embedding table) and the ratio to the bound."""
    model = llm.model
    embed = model.get_input_embeddings().weight
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    out: dict[str, Any] = {"weight_bytes_per_token": weight_bytes, "gpu": torch.cuda.get_device_name()}
    if bandwidth_gbs is None:
        name = out["gpu"]
        bandwidth_gbs = next((v for k, v in BANDWIDTH_GBS.items() if k in name), None)
    if bandwidth_gbs:
        bound = bandwidth_gbs * 1e9 / weight_bytes
        out.update(bandwidth_gbs=bandwidth_gbs, bound_tps=bound, fraction_of_bound=tps / bound)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="llm.model spec (repeatable)")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                        help="random ChatGLM2-shaped model (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/kbqa"))
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="GPU memory bandwidth (GB/s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not args.model and not args.shape:
        args.model = ["embedded:smollm2-135m-instruct"]
        args.shape = ["chatglm2-small"]
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name: Any = args.dtype if args.dtype != "auto" else ("bf16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {args.device}, {dtype_name}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        candidates: list[tuple[str, Any]] = [(m, None) for m in args.model or []]
        candidates += [(f"random {s}", s) for s in args.shape or []]
        for label, shape in candidates:
            if shape:
                llm = random_chatglm(shape, args.device, dtype, Path(tmp))
            else:
                settings = LLMSettings(backend="transformers", model=label, device=args.device,
                                       dtype=dtype_name, context_window=4096)
                llm = build_transformers_llm(settings, args.cache_dir)
            row = {"model": label, **measure(llm, args.new_tokens, args.rounds, args.device)}
            if args.device == "cuda":
                row.update(bandwidth_bound(llm, row["kbqa_tps"], args.bandwidth_gbs))
            results.append(row)
            print(f"{label}: prompt {row['prompt_tokens']} tok, {row['new_tokens']} new | bare "
                  f"{row['bare_tps']:.2f} tok/s, ttft {row['bare_ttft'] * 1000:.0f} ms | kbqa "
                  f"{row['kbqa_tps']:.2f} tok/s, ttft {row['kbqa_ttft'] * 1000:.0f} ms | ratio "
                  f"{row['ratio']:.3f} (rounds: {', '.join(f'{r:.2f}' for r in row['ratios_per_round'])})"
                  + (f" | {row['fraction_of_bound']:.2f} of the bandwidth bound" if "fraction_of_bound" in row
                     else ""), flush=True)
            del llm
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
