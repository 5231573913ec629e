"""Convert a ChatGLM2/3 checkpoint into a native transformers ``GlmForCausalLM`` folder (no remote code).

The mapping is exact (MODELS.md): the fused ``query_key_value`` rows split into ``q_proj``/``k_proj``/
``v_proj``; the other weights are renamed; the rotary cache is dropped. ``rope_ratio`` (the -32k variants)
divides the positions in ChatGLM2 (linear rope scaling) and multiplies the rotary base in ChatGLM3, as each
version's own code does. The output folder also holds ``tokenizer.model`` and ``kbqa_chatglm.json`` (prompt
format and stop ids), which tells kbqa to use ChatGLM's own tokenizer and prompt format. One output shard is
written per input shard, so memory stays at about one shard; the folder is written under a temporary name and
renamed when complete, so a half-written conversion is never used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from transformers import GenerationConfig, GlmConfig

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.fileio import staged_folder
from kbqa.llm.chatglm.checkpoint import MARKER_FILE, iter_tensors, read_json, read_source
from kbqa.llm.chatglm.tokenizer import TOKENIZER_FILE, ChatGLMTokenizer, Version

log = logging.getLogger(__name__)

#: Bumped when the output changes, so cached conversions are redone.
CONVERTER_VERSION = 2
Progress = Callable[[int, int], None]

_TOP = {"transformer.embedding.word_embeddings": "model.embed_tokens",
        "transformer.encoder.final_layernorm": "model.norm", "transformer.output_layer": "lm_head"}
_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_IN_LAYER = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
             "self_attention.dense": "self_attn.o_proj", "mlp.dense_h_to_4h": "mlp.gate_up_proj",
             "mlp.dense_4h_to_h": "mlp.down_proj"}
_DROPPED = ("transformer.rotary_pos_emb.inv_freq",)


def attention_dims(config: dict[str, Any]) -> tuple[int, int, int]:
    """``(heads, kv_groups, head_dim)`` of a ChatGLM config."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("kv_channels") or config["hidden_size"] // heads)
    groups = heads
    if config.get("multi_query_attention"):
        groups = int(config.get("multi_query_group_num") or heads)
    return heads, groups, head_dim


def map_module(name: str) -> list[tuple[str, str | None]] | None:
    """Native module name(s) of a ChatGLM module; the part is ``q``/``k``/``v`` for the fused QKV rows.

    Returns None for a module that has no native counterpart.
    """
    if name in _TOP:
        return [(_TOP[name], None)]
    match = _LAYER.fullmatch(name)
    if not match:
        return None
    index, rest = match.groups()
    if rest == "self_attention.query_key_value":
        return [(f"model.layers.{index}.self_attn.{part}_proj", part) for part in "qkv"]
    if rest in _IN_LAYER:
        return [(f"model.layers.{index}.{_IN_LAYER[rest]}", None)]
    return None


def split_rows(tensor: torch.Tensor, part: str | None, dims: tuple[int, int, int]) -> torch.Tensor:
    """Rows of the fused QKV tensor for ``part`` (a copy, so shards never share storage)."""
    if part is None:
        return tensor.contiguous()
    heads, groups, head_dim = dims
    q, kv = heads * head_dim, groups * head_dim
    start, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[part]
    if tensor.shape[0] != q + 2 * kv:
        raise ModelUnavailable(
            f"query_key_value has {tensor.shape[0]} rows where the model's shape (config.json) gives {q + 2 * kv}")
    return tensor[start:start + size].clone()


def rope_parameters(config: dict[str, Any], scales_base: bool) -> dict[str, Any]:
    """Native rotary settings: on the first half of each head; ``rope_ratio`` as the checkpoint applies it.

    ChatGLM2's code divides the positions by ``rope_ratio`` (position interpolation: chatglm2-6b-32k
    reads 32k positions as 8k), which is transformers' linear scaling; ChatGLM3's multiplies the base.
    """
    ratio = float(config.get("rope_ratio") or 1.0)
    if ratio == 1.0:
        return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if scales_base:
        return {"rope_type": "default", "rope_theta": 10000.0 * ratio, "partial_rotary_factor": 0.5}
    return {"rope_type": "linear", "factor": ratio, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}


def native_config(config: dict[str, Any], eos_ids: list[int], rope_scales_base: bool) -> GlmConfig:
    """The ``GlmConfig`` equivalent to a ChatGLM2/3 ``config.json``."""
    heads, groups, head_dim = attention_dims(config)
    return GlmConfig(
        vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=heads, num_key_value_heads=groups, head_dim=head_dim,
        max_position_embeddings=int(config.get("seq_length") or 32768),
        rms_norm_eps=float(config.get("layernorm_epsilon") or 1e-5),
        attention_bias=bool(config.get("add_qkv_bias", True)), tie_word_embeddings=False,
        rope_parameters=rope_parameters(config, rope_scales_base),
        pad_token_id=int(config.get("pad_token_id") or 0), eos_token_id=eos_ids, bos_token_id=None,
        architectures=["GlmForCausalLM"], dtype=config.get("torch_dtype") or "float16")


def stop_ids(tokenizer: ChatGLMTokenizer) -> list[int]:
    """Ids that end a reply: ``</s>``, and for ChatGLM3 the next ``<|user|>`` or ``<|observation|>``."""
    ids = [tokenizer.eos_id]
    if tokenizer.version == "chatglm3":
        ids += [tokenizer.token_id("<|user|>"), tokenizer.token_id("<|observation|>")]
    return ids


def is_converted_chatglm(folder: Path) -> bool:
    """True when ``folder`` is a finished conversion made by ``convert_chatglm``."""
    return (Path(folder) / MARKER_FILE).is_file() and (Path(folder) / "config.json").is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    """The conversion record of a converted folder (``version``, ``eos_token_ids``, ``source``...)."""
    return read_json(Path(folder) / MARKER_FILE)


def convert_chatglm(src: Path, dst: Path, progress: Progress | None = None, *,
                    version: Version | None = None,
                    elsewhere: str = "choose a folder you can write to, on a disk with room") -> Path:
    """Convert a ChatGLM2-6B / ChatGLM3-6B checkpoint into a native ``GlmForCausalLM`` folder.

    Args:
        src: The checkpoint as published (config.json, pytorch_model-*.bin or *.safetensors, tokenizer.model).
        dst: The folder to create; it must not exist yet (or be empty).
        progress: Called as ``progress(done, total)`` in bytes of source weights (tqdm: ``bar.update``).
        version: Force ``chatglm2`` or ``chatglm3``; detected from the checkpoint when None.
        elsewhere: What the user can do when ``dst`` cannot be written (ends the error message).

    Returns:
        ``dst``.

    Raises:
        ModelUnavailable: ``src`` is not a checkpoint kbqa can convert.
        ConfigError: ``dst`` already exists and is not empty, or cannot be written (no room, no permission).
    """
    source = read_source(Path(src), version)
    dst = Path(dst)
    if dst.resolve().is_relative_to(source.folder.resolve()):
        raise ConfigError(f"{dst} is inside the checkpoint folder {source.folder}: choose a folder outside it (the "
                          "converted model is a second copy of the weights, not part of the checkpoint).")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError(f"{dst} already exists; choose a new folder or delete it first.")
    tokenizer = ChatGLMTokenizer.from_folder(source.folder, source.version)
    if tokenizer.vocab_size > source.config["padded_vocab_size"]:
        forced = (f" (with the role tokens ChatGLM3 adds, as --version {version} says: is it a ChatGLM2 "
                  "checkpoint? Leave --version out to detect it)" if version == "chatglm3" else "")
        raise ModelUnavailable(f"{src}: tokenizer.model has {tokenizer.vocab_size} tokens{forced}, more than the "
                               f"model's padded_vocab_size {source.config['padded_vocab_size']}.")
    dims = attention_dims(source.config)
    total = sum(f.stat().st_size for f in source.weight_files)
    _check_room(dst, total, elsewhere)
    log.info("converting %s (%s) into %s", src, source.version, dst)
    try:
        with staged_folder(dst, is_converted_chatglm) as tmp:
            shapes = expected_shapes(source.config)
            weight_map = _convert_shards(source.weight_files, tmp, dims, shapes, total, progress)
            _check_complete(weight_map, shapes)
            eos = stop_ids(tokenizer)
            native_config(source.config, eos, source.rope_scales_base).save_pretrained(tmp)
            GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_id).save_pretrained(tmp)
            shutil.copyfile(source.folder / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            marker = {"converter_version": CONVERTER_VERSION, "version": source.version,
                      "source": str(source.folder.resolve()), "eos_token_ids": eos,
                      # a fine-tune saved whole: its P-tuning prefix is not part of the native model
                      "ptuning_prefix": bool(source.config.get("pre_seq_len"))}
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            for written in tmp.glob("*.safetensors"):  # safetensors writes owner-only files; share like the rest
                written.chmod(0o644)
            if dst.is_dir():
                # Empty, checked above; or another process's finished conversion since, which staged_folder keeps.
                with contextlib.suppress(OSError):
                    dst.rmdir()
    except (OSError, SafetensorError) as exc:  # the source was read by now: this is the destination's fault
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        room = f"; it needs about {total / 2**30:.1f} GiB free there" if "space" in reason.lower() else ""
        raise ConfigError(f"Cannot write the converted model to {dst} ({reason}){room}: {elsewhere}.") from exc
    if progress:
        progress(total, total)
    return dst


def _check_room(dst: Path, needed: int, elsewhere: str) -> None:
    """Refuse before converting when the destination's disk cannot hold the converted weights."""
    existing = next((p for p in (dst, *dst.parents) if p.exists()), None)
    if existing is None:
        return
    usage = shutil.disk_usage(existing)
    if usage.total == 0:  # no disk (/proc, /sys): writing there fails, and says why, better than "0.0 GiB free"
        return
    free = usage.free
    if free < needed * 1.02:
        raise ConfigError(f"The converted model needs about {needed / 2**30:.1f} GiB, but the disk of {existing} "
                          f"has {free / 2**30:.1f} GiB free: {elsewhere}.")


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every weight of the native model a ChatGLM config describes, with its shape."""
    heads, groups, head_dim = attention_dims(config)
    hidden, vocab, ffn = int(config["hidden_size"]), int(config["padded_vocab_size"]), int(config["ffn_hidden_size"])
    q, kv = heads * head_dim, groups * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
                                          "lm_head.weight": (vocab, hidden)}
    for i in range(int(config["num_layers"])):
        at = f"model.layers.{i}."
        shapes |= {at + "input_layernorm.weight": (hidden,), at + "post_attention_layernorm.weight": (hidden,),
                   at + "self_attn.q_proj.weight": (q, hidden), at + "self_attn.k_proj.weight": (kv, hidden),
                   at + "self_attn.v_proj.weight": (kv, hidden), at + "self_attn.o_proj.weight": (hidden, q),
                   at + "mlp.gate_up_proj.weight": (2 * ffn, hidden), at + "mlp.down_proj.weight": (hidden, ffn)}
        if config.get("add_qkv_bias", True):  # else the native model would start them at random
            shapes |= {at + "self_attn.q_proj.bias": (q,), at + "self_attn.k_proj.bias": (kv,),
                       at + "self_attn.v_proj.bias": (kv,)}
    return shapes


def _convert_shards(files: tuple[Path, ...], out: Path, dims: tuple[int, int, int],
                    shapes: dict[str, tuple[int, ...]], total: int, progress: Progress | None) -> dict[str, str]:
    weight_map: dict[str, str] = {}
    done = 0
    for number, path in enumerate(files, start=1):
        name = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        if len(files) == 1:
            name = "model.safetensors"
        shard: dict[str, torch.Tensor] = {}
        for key, tensor in iter_tensors(path):
            done += tensor.numel() * tensor.element_size()
            if progress:
                progress(min(done, total), total)
            if key in _DROPPED:
                continue
            if key.startswith("transformer.prefix_encoder."):
                log.warning("%s holds a P-tuning prefix (%s): set llm.adapter to this folder to use it",
                            path, key)
                continue
            module, _, param = key.rpartition(".")
            targets = map_module(module) if param in ("weight", "bias") else None
            if targets is None:
                raise ModelUnavailable(f"{path}: unexpected weight '{key}' (not a ChatGLM2/3 full-precision "
                                       f"checkpoint?).")
            for native, part in targets:
                try:
                    converted = split_rows(tensor, part, dims)
                except ModelUnavailable as exc:
                    raise ModelUnavailable(f"{path}: {exc}; is config.json the checkpoint's own?") from None
                name_ = f"{native}.{param}"
                if name_ not in shapes:
                    layer = _LAYER.fullmatch(module)
                    why = (f"its layer is beyond num_layers {shapes_layers(shapes)}"
                           if layer and int(layer.group(1)) >= shapes_layers(shapes) else
                           "the model config.json describes has no such weight (add_qkv_bias, add_bias_linear?)")
                    raise ModelUnavailable(f"{path}: weight '{key}' does not fit config.json: {why}; is config.json "
                                           "the checkpoint's own?")
                if tuple(converted.shape) != shapes[name_]:
                    raise ModelUnavailable(f"{path}: weight '{key}' has shape {tuple(tensor.shape)}, which does not "
                                           "fit the sizes in config.json (hidden_size, ffn_hidden_size, "
                                           "padded_vocab_size, heads); is config.json the checkpoint's own?")
                shard[name_] = converted
        if shard:
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        del shard
    if len(files) > 1:
        sizes = sum((out / n).stat().st_size for n in set(weight_map.values()))
        index = {"metadata": {"total_size": sizes}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return weight_map


def shapes_layers(shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of layers ``expected_shapes`` described."""
    return sum(key.endswith(".input_layernorm.weight") for key in shapes)


def _check_complete(weight_map: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(shapes) - set(weight_map))
    if not missing:
        return
    held = {int(m.group(1)) for key in weight_map if (m := _NATIVE_LAYER.search(key))}
    lacking = {int(m.group(1)) for key in missing if (m := _NATIVE_LAYER.search(key))}
    # Whole layers past the last one held, and nothing else: config.json's num_layers is over the weights'.
    if held and lacking and min(lacking) > max(held) and all(_NATIVE_LAYER.search(key) for key in missing):
        raise ModelUnavailable(
            f"config.json says num_layers = {max(lacking) + 1}, but the weights hold layers 0-{max(held)} only "
            f"({max(held) + 1} layers): is num_layers the checkpoint's own (fix config.json), or is a weight file "
            "missing?")
    raise ModelUnavailable(
        f"The checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}: is it complete?")


_NATIVE_LAYER = re.compile(r"\.layers\.(\d+)\.")
