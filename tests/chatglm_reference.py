"""An independent plain-torch ChatGLM2 forward pass, written from ChatGLM2's architecture, for tests.

It reads ChatGLM2's own key names and config.json fields (no transformers code): fused QKV with bias split
into query heads / key groups / value groups, grouped key-value heads, rotary embedding on the first half of
each head in interleaved pairs, RMSNorm, SwiGLU, an untied output layer. ``rope_ratio`` (the -32k variants)
works as each version's own code applies it: ChatGLM2 divides the positions by it, ChatGLM3 multiplies the
rotary base 10000 by it. Padding is on the left, positions count from the first real token (as ChatGLM2's
tokenizer pads them), and an optional P-tuning v2 prefix adds un-rotated keys/values every token sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float, scale: float = 1.0) -> torch.Tensor:
    """Rotary embedding on the first half of the last dim, pairs (0,1), (2,3)...; x: (b, s, h, d).

    ``scale`` divides the positions (ChatGLM2-6B-32k's position interpolation).
    """
    rot = x.shape[-1] // 2
    theta = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)  # (rot/2,)
    angles = (positions.to(torch.float64) / scale)[..., None] * theta  # (b, s, rot/2)
    cos, sin = angles.cos()[:, :, None, :].to(x.dtype), angles.sin()[:, :, None, :].to(x.dtype)
    pairs = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, x[..., rot:]], dim=-1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny tensor ops on one thread: far faster than a 2-thread team on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ChatGLM2Reference:
    """``logits = ChatGLM2Reference(state, config)(input_ids, attention_mask, prefix)``.

    ``version`` is "chatglm2" or "chatglm3": they differ only in how ``rope_ratio`` applies.
    """

    def __init__(self, state: dict[str, torch.Tensor], config: dict[str, Any], version: str = "chatglm2") -> None:
        self.w = {k: v.double() for k, v in state.items()}
        self.c = config
        self.heads = config["num_attention_heads"]
        self.groups = config["multi_query_group_num"] if config["multi_query_attention"] else self.heads
        self.head_dim = config["kv_channels"]
        ratio = float(config.get("rope_ratio") or 1.0)
        self.base, self.scale = (10000.0 * ratio, 1.0) if version == "chatglm3" else (10000.0, ratio)

    def prefix(self, embedding: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (key, value), each (pre_seq_len, groups, head_dim), from a prefix encoder output."""
        layers = self.c["num_layers"]
        past = embedding.double().view(embedding.shape[0], layers * 2, self.groups, self.head_dim)
        return [(past[:, 2 * i], past[:, 2 * i + 1]) for i in range(layers)]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        with one_thread():
            return self.forward(input_ids, attention_mask, prefix)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                prefix: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        w, eps = self.w, self.c["layernorm_epsilon"]
        batch, seq = input_ids.shape
        mask = torch.ones(batch, seq, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
        # Padding rows see themselves only, so they stay finite (their outputs are never used).
        allowed = (causal[None] & mask[:, None, :]) | torch.eye(seq, dtype=torch.bool)[None]  # (b, q, k)
        pre = 0 if prefix is None else prefix[0][0].shape[0]
        allowed = torch.cat([torch.ones(batch, seq, pre, dtype=torch.bool), allowed], dim=-1)
        x = w["transformer.embedding.word_embeddings.weight"][input_ids]
        h, g, d = self.heads, self.groups, self.head_dim
        for i in range(self.c["num_layers"]):
            p = f"transformer.encoder.layers.{i}."
            y = rms_norm(x, w[p + "input_layernorm.weight"], eps)
            fused = p + "self_attention.query_key_value"
            qkv = y @ w[fused + ".weight"].T + w[fused + ".bias"]
            q, k, v = qkv.split([h * d, g * d, g * d], dim=-1)
            q = rotate(q.view(batch, seq, h, d), positions, self.base, self.scale)
            k = rotate(k.view(batch, seq, g, d), positions, self.base, self.scale)
            v = v.view(batch, seq, g, d)
            if prefix is not None:
                pk, pv = prefix[i]
                k = torch.cat([pk[None].expand(batch, -1, -1, -1), k], dim=1)
                v = torch.cat([pv[None].expand(batch, -1, -1, -1), v], dim=1)
            # Each group of heads // groups query heads shares one key/value head.
            k = k.repeat_interleave(h // g, dim=2)
            v = v.repeat_interleave(h // g, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d ** 0.5
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
            attn = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, seq, h * d)
            x = x + attn @ w[p + "self_attention.dense.weight"].T
            y = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            a, b = (y @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
            x = x + (F.silu(a) * b) @ w[p + "mlp.dense_4h_to_h.weight"].T
        x = rms_norm(x, w["transformer.encoder.final_layernorm.weight"], eps)
        return x @ w["transformer.output_layer.weight"].T

    def greedy(self, ids: list[int], steps: int,
               prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
               stop: tuple[int, ...] = ()) -> list[int]:
        """Greedy continuation of ``ids`` (no cache: the whole sequence each step)."""
        out = list(ids)
        for _ in range(steps):
            token = int(self(torch.tensor([out]), prefix=prefix)[0, -1].argmax())
            out.append(token)
            if token in stop:
                break
        return out[len(ids):]
