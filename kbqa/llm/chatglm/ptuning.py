"""P-tuning v2 checkpoints from ChatGLM-6B's ``ptuning`` recipe, applied to a converted model.

Such a checkpoint holds a prefix encoder (``transformer.prefix_encoder.embedding.weight``, optionally an
MLP ``trans.0`` / ``trans.2``) and ``pre_seq_len`` in its ``config.json``. Its output, computed once for
prefix positions ``0..pre_seq_len-1``, is a key and a value per layer that every token attends to, before
the real tokens. As in ChatGLM2, these prefix keys carry no rotary embedding and the real tokens keep
positions starting at 0. The prefix is added inside attention (a registered attention function), so
transformers' ``generate``, caches and masks stay untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.llm.chatglm.checkpoint import find_weight_files, iter_tensors, read_json

PREFIX_KEY = "transformer.prefix_encoder."
ATTENTION_NAME = "kbqa_prefix_sdpa"


def is_ptuning_checkpoint(folder: Path) -> bool:
    """True when ``folder`` has a ``config.json`` with a ``pre_seq_len`` (ChatGLM's P-tuning v2 output)."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    try:
        return bool(read_json(config).get("pre_seq_len"))
    except ModelUnavailable:
        return False


def load_prefix(folder: Path, *, num_layers: int, num_kv_heads: int, head_dim: int,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix keys and values, each ``(num_layers, num_kv_heads, pre_seq_len, head_dim)``.

    Raises:
        ModelUnavailable: the folder holds no prefix encoder.
        ConfigError: the prefix was trained for a model of another shape.
    """
    folder = Path(folder)
    config: dict[str, Any] = read_json(folder / "config.json")
    pre_seq_len = int(config.get("pre_seq_len") or 0)
    weights: dict[str, torch.Tensor] = {}
    for path in find_weight_files(folder):
        weights.update((k.removeprefix(PREFIX_KEY), v.float())
                       for k, v in iter_tensors(path) if k.startswith(PREFIX_KEY))
    if "embedding.weight" not in weights:
        raise ModelUnavailable(
            f"{folder} holds no '{PREFIX_KEY}embedding.weight': not a P-tuning v2 checkpoint.")
    prefix = weights["embedding.weight"]
    if "trans.0.weight" in weights:  # prefix_projection: embedding -> Linear -> tanh -> Linear
        hidden = torch.tanh(prefix @ weights["trans.0.weight"].T + weights["trans.0.bias"])
        prefix = hidden @ weights["trans.2.weight"].T + weights["trans.2.bias"]
    expected = num_layers * 2 * num_kv_heads * head_dim
    if prefix.shape[0] != pre_seq_len:
        raise ConfigError(
            f"The P-tuning checkpoint {folder} is inconsistent: its config.json says pre_seq_len {pre_seq_len}, its "
            f"prefix encoder holds {prefix.shape[0]} rows. Copy the config.json saved with these weights.")
    if prefix.shape[1] != expected:
        raise ConfigError(
            f"The P-tuning checkpoint {folder} does not fit this model: each of its {pre_seq_len} prefix rows holds "
            f"{prefix.shape[1]} values, the model needs {expected} (layers x 2 x key/value groups x head size). Was "
            "it trained on another base model?")
    # ChatGLM2 views the prefix as (seq, layers * 2, groups, head_dim): key then value for each layer.
    kv = prefix.view(pre_seq_len, num_layers, 2, num_kv_heads, head_dim).permute(2, 1, 3, 0, 4)
    return kv[0].to(dtype).contiguous(), kv[1].to(dtype).contiguous()


def attach_prefix(model: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make every attention layer of a native GLM model attend to the prefix first."""
    layers = model.model.layers
    if keys.shape[0] != len(layers):
        raise ConfigError(f"The P-tuning prefix has {keys.shape[0]} layers, the model {len(layers)}.")
    embeddings = model.get_input_embeddings().weight  # never quantized
    for index, layer in enumerate(layers):
        device = layer.self_attn.o_proj.weight.device
        layer.self_attn.kbqa_prefix = (keys[index].to(device, embeddings.dtype)[None],
                                       values[index].to(device, embeddings.dtype)[None])
    AttentionInterface.register(ATTENTION_NAME, prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    model.set_attn_implementation(ATTENTION_NAME)


def prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA attention over ``[prefix keys, keys]``; the mask gains all-visible prefix columns."""
    prefix = getattr(module, "kbqa_prefix", None)
    kwargs.pop("is_causal", None)
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    prefix_k, prefix_v = (p.to(key.dtype).expand(batch, -1, -1, -1) for p in prefix)
    key, value = torch.cat([prefix_k, key], dim=2), torch.cat([prefix_v, value], dim=2)
    if attention_mask is None and q_len > 1:  # causal, aligned to the end of the cache
        rows = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
        attention_mask = (torch.arange(kv_len, device=query.device)[None, :] <= rows)[None, None]
    if attention_mask is not None:
        shape = (*attention_mask.shape[:-1], prefix_k.shape[2])
        visible = (torch.ones(shape, dtype=torch.bool, device=attention_mask.device)
                   if attention_mask.dtype == torch.bool else
                   torch.zeros(shape, dtype=attention_mask.dtype, device=attention_mask.device))
        attention_mask = torch.cat([visible, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, is_causal=False, **kwargs)
