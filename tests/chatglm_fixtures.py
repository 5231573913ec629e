"""Tiny checkpoints in ChatGLM2/3's on-disk format, generated for tests (no real weights are reachable).

They use ChatGLM2's key names and config.json fields, a SentencePiece ``tokenizer.model`` trained here,
and random weights scaled so that logits are well separated (greedy decoding is then stable across
implementations).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from kbqa.llm.base import GenerationParams
from kbqa.settings import LLMSettings

CORPUS = [
    "Hello world, this is a small knowledge base test.",
    "The quick brown fox jumps over the lazy dog.",
    "知识库问答系统可以根据文档回答问题。",
    "ChatGLM2 是一个开源的中英双语对话模型。",
    "我们在本地运行大语言模型，不需要联网。",
    "问：北京是哪个国家的首都？答：北京是中国的首都。",
    "Round one, question and answer. The answer is 42.",
] * 20

#: Extra special tokens ChatGLM2 (5) and ChatGLM3 (9) put after the SentencePiece pieces.
SPECIALS = {"chatglm2": 5, "chatglm3": 9}


def train_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """A small BPE SentencePiece model with byte fallback (Chinese characters mostly become bytes)."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2, hard_vocab_limit=False)
    path.write_bytes(buffer.getvalue())
    return path


def chatglm_config(sp_size: int, version: str = "chatglm2", **overrides: Any) -> dict[str, Any]:
    """A config.json as ChatGLM2-6B publishes it, at a tiny size."""
    config: dict[str, Any] = {
        "_name_or_path": f"THUDM/{version}-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 96,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
        "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 4, "num_layers": 2, "original_rope": True,
        "padded_vocab_size": sp_size + SPECIALS[version] + 3, "post_layer_norm": True, "rmsnorm": True,
        "seq_length": 256, "use_cache": True, "torch_dtype": "float32", "transformers_version": "4.27.1",
        "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    if version == "chatglm3":
        config.update(pre_seq_len=None, prefix_projection=False, classifier_dropout=None)
    config.update(overrides)
    return config


def random_state(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under ChatGLM2's key names."""
    gen = torch.Generator().manual_seed(seed)
    hidden, ffn = config["hidden_size"], config["ffn_hidden_size"]
    head_dim, heads = config["kv_channels"], config["num_attention_heads"]
    groups = config["multi_query_group_num"]
    qkv = (heads + 2 * groups) * head_dim

    def linear(rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * gain / cols ** 0.5

    def norm(size: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(size, generator=gen)

    state = {"transformer.embedding.word_embeddings.weight": torch.randn(config["padded_vocab_size"], hidden,
                                                                         generator=gen),
             "transformer.rotary_pos_emb.inv_freq": torch.rand(head_dim // 4, generator=gen)}
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        state.update({
            p + "input_layernorm.weight": norm(hidden),
            p + "self_attention.query_key_value.weight": linear(qkv, hidden, 2.0),
            p + "self_attention.query_key_value.bias": 0.2 * torch.randn(qkv, generator=gen),
            p + "self_attention.dense.weight": linear(hidden, heads * head_dim),
            p + "post_attention_layernorm.weight": norm(hidden),
            p + "mlp.dense_h_to_4h.weight": linear(2 * ffn, hidden),
            p + "mlp.dense_4h_to_h.weight": linear(hidden, ffn),
        })
    state["transformer.encoder.final_layernorm.weight"] = norm(hidden)
    state["transformer.output_layer.weight"] = linear(config["padded_vocab_size"], hidden, 4.0)
    return state


def write_checkpoint(folder: Path, tokenizer_model: Path, *, version: str = "chatglm2", fmt: str = "bin",
                     shards: int = 2, seed: int = 0,
                     **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write a ChatGLM checkpoint folder; returns its config and its state dict (for the reference)."""
    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    config = chatglm_config(sp.get_piece_size(), version, **overrides)
    state = random_state(config, seed)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": f"THUDM/{version}-6b", "remove_space": False, "do_lower_case": False,
        "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}), encoding="utf-8")
    keys = list(state)
    parts = [keys[i::shards] for i in range(shards)]
    suffix = "bin" if fmt == "bin" else "safetensors"
    stem = "pytorch_model" if fmt == "bin" else "model"
    weight_map = {}
    for number, part in enumerate(parts, start=1):
        name = f"{stem}-{number:05d}-of-{shards:05d}.{suffix}" if shards > 1 else f"{stem}.{suffix}"
        tensors = {k: state[k].contiguous() for k in part}
        if fmt == "bin":
            torch.save(tensors, folder / name)
        else:
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    if shards > 1:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index), encoding="utf-8")
    return config, state


def write_ptuning(folder: Path, config: dict[str, Any], pre_seq_len: int = 4, seed: int = 7,
                  projection: bool = False) -> dict[str, torch.Tensor]:
    """A P-tuning v2 checkpoint as ChatGLM's ``ptuning`` recipe saves it: the prefix encoder only."""
    gen = torch.Generator().manual_seed(seed)
    kv_size = config["num_layers"] * config["kv_channels"] * config["multi_query_group_num"] * 2
    embedding = torch.randn(pre_seq_len, kv_size, generator=gen)
    weights = {"transformer.prefix_encoder.embedding.weight": embedding}
    if projection:
        hidden = config["hidden_size"]
        weights.update({
            "transformer.prefix_encoder.trans.0.weight": torch.randn(hidden, kv_size, generator=gen) * 0.1,
            "transformer.prefix_encoder.trans.0.bias": torch.randn(hidden, generator=gen) * 0.1,
            "transformer.prefix_encoder.trans.2.weight": torch.randn(kv_size, hidden, generator=gen) * 0.5,
            "transformer.prefix_encoder.trans.2.bias": torch.randn(kv_size, generator=gen) * 0.1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {**config, "pre_seq_len": pre_seq_len, "prefix_projection": projection}), encoding="utf-8")
    torch.save(weights, folder / "pytorch_model.bin")
    return weights


def write_lora(folder: Path, config: dict[str, Any], rank: int = 4, alpha: float = 8.0,
               seed: int = 11, ends: bool = False) -> dict[str, torch.Tensor]:
    """A peft LoRA adapter on ChatGLM2's module names (query_key_value and dense_h_to_4h).

    ``ends`` adds the output layer and the word embeddings (peft's embedding LoRA) to the targets.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden, ffn, vocab = config["hidden_size"], config["ffn_hidden_size"], config["padded_vocab_size"]
    qkv = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * config["kv_channels"]
    weights = {}
    modules = [(f"encoder.layers.{i}.{m}", rows) for i in range(config["num_layers"])
               for m, rows in (("self_attention.query_key_value", qkv), ("mlp.dense_h_to_4h", 2 * ffn))]
    for module, rows in modules + ([("output_layer", vocab)] if ends else []):
        key = f"base_model.model.transformer.{module}"
        weights[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.3
        weights[f"{key}.lora_B.weight"] = torch.randn(rows, rank, generator=gen) * 0.3
    if ends:
        key = "base_model.model.transformer.embedding.word_embeddings"
        weights[f"{key}.lora_embedding_A"] = torch.randn(rank, vocab, generator=gen) * 0.3
        weights[f"{key}.lora_embedding_B"] = torch.randn(hidden, rank, generator=gen) * 0.3
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": ["query_key_value", "dense_h_to_4h"] + (["output_layer", "word_embeddings"] if ends else []),
        "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": "THUDM/chatglm2-6b", "inference_mode": True}), encoding="utf-8")
    return weights


def merge_lora(state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], rank: int = 4,
               alpha: float = 8.0) -> dict[str, torch.Tensor]:
    """ChatGLM weights with a LoRA folded in (W + alpha/r * B @ A), for the reference."""
    merged = dict(state)
    for key, a in lora.items():
        if key.endswith(".lora_embedding_A"):  # peft's embedding LoRA: W += scale * (B @ A).T
            module = key.removeprefix("base_model.model.").removesuffix(".lora_embedding_A")
            b = lora[key.replace("lora_embedding_A", "lora_embedding_B")]
            merged[f"{module}.weight"] = state[f"{module}.weight"] + (alpha / rank) * (b @ a).T
            continue
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = lora[key.replace("lora_A", "lora_B")]
        merged[f"{module}.weight"] = state[f"{module}.weight"] + (alpha / rank) * b @ a
    return merged


def llm_settings(model: Path | str, **overrides: Any) -> LLMSettings:
    """Settings of the transformers backend on a CPU, greedy, without repetition penalty."""
    values: dict[str, Any] = {"backend": "transformers", "model": str(model), "device": "cpu",
                              "dtype": "fp32", "context_window": 256, "max_tokens": 20, "temperature": 0.0,
                              "repetition_penalty": 1.0, **overrides}
    return LLMSettings(**values)


def greedy_params(settings: LLMSettings, **overrides: Any) -> GenerationParams:
    """The generation parameters the service would derive from ``settings``."""
    values: dict[str, Any] = {"max_tokens": settings.max_tokens, "temperature": settings.temperature,
                              "top_p": settings.top_p, "repetition_penalty": settings.repetition_penalty,
                              **overrides}
    return GenerationParams(**values)
