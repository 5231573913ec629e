"""LoRA adapters trained on ChatGLM2/3's own module names, rewritten for the converted native model.

A LoRA on the fused ``query_key_value`` adds ``B @ A``; split by rows, ``B`` gives three LoRAs sharing
``A`` on ``q_proj``/``k_proj``/``v_proj``, the same update exactly. The other modules are renamed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.llm.chatglm.checkpoint import iter_tensors, read_json
from kbqa.llm.chatglm.convert import map_module, split_rows

ADAPTER_CONFIG = "adapter_config.json"
#: ChatGLM module name -> native module names (what ``target_modules`` lists).
TARGETS = {"query_key_value": ["q_proj", "k_proj", "v_proj"], "dense": ["o_proj"],
           "dense_h_to_4h": ["gate_up_proj"], "dense_4h_to_h": ["down_proj"], "output_layer": ["lm_head"],
           "word_embeddings": ["embed_tokens"]}
_NATIVE = {n for names in TARGETS.values() for n in names}
_PEFT_PREFIX = "base_model.model."


def is_lora(folder: Path) -> bool:
    """True when ``folder`` is a peft LoRA adapter."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _weights_file(folder: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise ModelUnavailable(f"{folder} has {ADAPTER_CONFIG} but no adapter_model.safetensors or .bin.")


def lora_layers(folder: Path) -> set[int]:
    """The indices of the transformer layers a LoRA adapter holds weights for (ChatGLM's or native names)."""
    found = (re.search(r"\.layers\.(\d+)\.", key) for key, _ in iter_tensors(_weights_file(folder)))
    return {int(m.group(1)) for m in found if m}


def is_chatglm_lora(folder: Path) -> bool:
    """True when a peft LoRA adapter targets ChatGLM's own module names (``transformer.encoder...``)."""
    if not is_lora(folder):
        return False
    return any(".transformer.encoder." in key or ".transformer.output_layer" in key
               for key, _ in iter_tensors(_weights_file(folder)))


def convert_lora(src: Path, dst: Path, dims: tuple[int, int, int]) -> Path:
    """Write a copy of a ChatGLM-named LoRA adapter that applies to the converted native model.

    Args:
        src: The peft adapter folder (``adapter_config.json`` + weights).
        dst: An empty or new folder for the rewritten adapter.
        dims: ``(heads, kv_groups, head_dim)`` of the base model, to split the fused QKV rows.

    Raises:
        ConfigError: the adapter uses peft features this rewrite does not cover.
    """
    config: dict[str, Any] = read_json(Path(src) / ADAPTER_CONFIG)
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{src} is a {config.get('peft_type')} adapter; kbqa loads LoRA and P-tuning v2.")
    for unsupported in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if config.get(unsupported):
            raise ConfigError(f"{src}: LoRA option '{unsupported}' is not supported for ChatGLM adapters.")
    if config.get("use_dora") or config.get("bias", "none") != "none":
        raise ConfigError(f"{src}: DoRA and LoRA biases are not supported for ChatGLM adapters.")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    # A target peft would not find in the converted model would be skipped silently (its weights unused).
    unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in TARGETS.keys() | _NATIVE]
    if unknown:
        raise ConfigError(f"{src}: LoRA target_modules {unknown} have no counterpart in the converted model "
                          f"(known: {', '.join(TARGETS)}).")
    config["target_modules"] = sorted({n for t in targets for n in TARGETS.get(t.rsplit(".", 1)[-1], [t])})
    config["base_model_name_or_path"] = None
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in iter_tensors(_weights_file(src)):
        body = key.removeprefix(_PEFT_PREFIX)
        module, _, rest = body.partition(".lora_")
        mapped = map_module(module) if rest else None
        if mapped is None:
            raise ConfigError(f"{src}: adapter weight '{key}' has no counterpart in the converted model.")
        for native, part in mapped:
            try:
                rows = split_rows(tensor, part, dims) if rest.startswith("B") else tensor.clone()
            except ModelUnavailable as exc:
                raise ConfigError(f"The LoRA adapter {src} does not fit this model ({key}: {exc}): was it "
                                  "trained on another base model? Set llm.adapter to one trained on llm.model."
                                  ) from None
            tensors[f"{_PEFT_PREFIX}{native}.lora_{rest}"] = rows
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    (dst / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dst
