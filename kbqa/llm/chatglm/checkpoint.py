"""Read a ChatGLM2/3 checkpoint folder as published: ``config.json``, weight shards, ``tokenizer.model``.

Nothing here imports or runs the checkpoint's own Python files; they are at most read as text to tell
ChatGLM3 from ChatGLM2 (both use the same ``model_type`` and shapes).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kbqa.errors import ModelUnavailable
from kbqa.llm.chatglm.tokenizer import TOKENIZER_FILE, Version
from kbqa.models import check_not_lfs_pointers

log = logging.getLogger(__name__)

#: Written into a folder converted by kbqa (prompt format, stop ids, source).
MARKER_FILE = "kbqa_chatglm.json"
CHATGLM_ARCHITECTURES = {"ChatGLMModel", "ChatGLMForConditionalGeneration"}
#: Settings ChatGLM2/3 always have; a checkpoint with other values is a different architecture.
_REQUIRED = {"rmsnorm": True, "original_rope": True, "add_bias_linear": False, "post_layer_norm": True,
             "apply_residual_connection_post_layernorm": False}


@dataclass(frozen=True)
class ChatGLMSource:
    """A published ChatGLM2/3 checkpoint, checked and ready to convert."""

    folder: Path
    config: dict[str, Any]
    version: Version
    weight_files: tuple[Path, ...]
    #: How ``rope_ratio`` applies (the -32k variants): multiplying the rotary base (ChatGLM3's code) or dividing
    #: the positions (ChatGLM2's); read from the checkpoint's own ``modeling_chatglm.py`` where it tells.
    rope_scales_base: bool = False


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; an unreadable file is a ModelUnavailable naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path} does not hold a JSON object.")
    return data


def is_chatglm_checkpoint(folder: Path) -> bool:
    """True when ``folder`` holds a ChatGLM-format (``transformer.encoder.*``) checkpoint."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and _chatglm_format(Path(folder), config)


def _chatglm_format(folder: Path, config: dict[str, Any]) -> bool:
    """Whether a checkpoint with this ``config.json`` is in ChatGLM's format (its type, or its weights' names)."""
    architectures = set(config.get("architectures") or [])
    if config.get("model_type") == "chatglm" or CHATGLM_ARCHITECTURES & architectures:
        return True
    for index in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        if (Path(folder) / index).is_file():
            keys = read_json(Path(folder) / index).get("weight_map", {})
            return any(k.startswith("transformer.encoder.layers.") for k in keys)
    return False


def find_weight_files(folder: Path) -> list[Path]:
    """The weight shards of a checkpoint, safetensors preferred over ``.bin``, in shard order.

    A format whose index names missing shards gives way to the other one when that one is complete (the
    hub has both for ChatGLM3-6B, and a download of only ``*.bin`` keeps both index files).
    """
    folder = Path(folder)
    incomplete: list[str] = []
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index_name).is_file():
            names = sorted(set(read_json(folder / index_name).get("weight_map", {}).values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if not missing:
                return [folder / n for n in names]
            incomplete.append(f"{', '.join(missing)} missing (see {index_name})")
        elif (folder / single).is_file():
            return [folder / single]
    if incomplete:
        raise ModelUnavailable(f"{folder} is incomplete: {'; '.join(incomplete)}.")
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one shard, by name; ``.bin`` files are read with ``weights_only`` (no pickled code).

    Raises:
        ModelUnavailable: the file cannot be read (cut short by a download, damaged).
    """
    if path.suffix == ".safetensors":
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as exc:  # SafetensorError for a truncated or damaged header
            raise ModelUnavailable(f"Cannot read weights from {path}: {exc} (is the file complete? Download "
                                   "it again).") from exc
        with handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                try:
                    tensor = handle.get_tensor(key)
                except Exception as exc:
                    raise ModelUnavailable(f"Cannot read '{key}' from {path}: {exc} (is the file complete? "
                                           "Download it again).") from exc
                yield key, tensor
        return
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files from before torch's zip format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailable(f"Cannot read weights from {path}: {exc} (is the file complete? Download it "
                               "again).") from exc
    yield from state.items()


def detect_version(folder: Path, config: dict[str, Any]) -> Version:
    """ChatGLM3 or ChatGLM2: the shapes match, so look at names and the tokenizer's role tokens."""
    texts = [json.dumps(config)]
    for name in ("tokenizer_config.json", "tokenization_chatglm.py", "generation_config.json"):
        path = Path(folder) / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    hay = "\n".join(texts).lower()
    if "chatglm3" in hay or "<|user|>" in hay or "chatglm3" in Path(folder).resolve().name.lower():
        return "chatglm3"
    return "chatglm2"


def _names_role_tokens(folder: Path) -> bool:
    """Whether the checkpoint's tokenizer files name ChatGLM3's role tokens (sure sign of ChatGLM3, where names
    in config.json or the folder's name may only echo a fine-tune's)."""
    for name in ("tokenizer_config.json", "tokenization_chatglm.py"):
        path = Path(folder) / name
        if path.is_file() and "<|user|>" in path.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


def read_source(folder: Path, version: Version | None = None) -> ChatGLMSource:
    """Check a ChatGLM checkpoint folder and describe it.

    Args:
        folder: The checkpoint as published (config.json, weight shards, tokenizer.model).
        version: Force ``chatglm2`` or ``chatglm3``; detected when None.

    Raises:
        ModelUnavailable: not a ChatGLM2/3 checkpoint kbqa can convert, with the reason.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ModelUnavailable(f"{folder} does not exist: give the folder of a ChatGLM2/3-6B checkpoint.")
    if (folder / MARKER_FILE).is_file():
        raise ModelUnavailable(f"{folder} is already converted by kbqa: set llm.model to it as it is.")
    check_not_lfs_pointers(folder)
    # Read once; one that cannot be read says so, not "not a ChatGLM checkpoint".
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if config is None or not _chatglm_format(folder, config):
        raise ModelUnavailable(
            f"{folder} is not a ChatGLM checkpoint (config.json with model_type 'chatglm').")
    if "position_encoding_2d" in config or "inner_hidden_size" in config:
        raise ModelUnavailable(
            f"{folder} is a first-generation ChatGLM-6B checkpoint, whose architecture differs; "
            f"use ChatGLM2-6B or ChatGLM3-6B.")
    if config.get("quantization_bit"):
        raise ModelUnavailable(
            f"{folder} is a pre-quantized ChatGLM checkpoint (quantization_bit="
            f"{config['quantization_bit']}); "
            f"use the full-precision checkpoint and set llm.quantization = '8bit' or '4bit' instead.")
    wrong = {k: config[k] for k, v in _REQUIRED.items() if k in config and config[k] != v}
    if wrong:
        raise ModelUnavailable(f"{folder}: unsupported ChatGLM variant ({wrong}); kbqa reads ChatGLM2/3-6B.")
    for key in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "padded_vocab_size"):
        if not isinstance(config.get(key), int):
            raise ModelUnavailable(f"{folder}/config.json lacks '{key}': not a ChatGLM2/3 config.")
    files = find_weight_files(folder)
    if config.get("pre_seq_len") and _only_prefix_encoder(files):
        raise ModelUnavailable(
            f"{folder} is a P-tuning v2 checkpoint (pre_seq_len {config['pre_seq_len']}, only the prefix "
            "encoder's weights): set llm.adapter to it, and llm.model to the ChatGLM2/3 checkpoint it was "
            "trained on.")
    if not (folder / TOKENIZER_FILE).is_file():
        raise ModelUnavailable(f"{folder} has no {TOKENIZER_FILE}; it is part of the published checkpoint.")
    if not files:
        raise ModelUnavailable(f"{folder} holds no weights (pytorch_model*.bin or *.safetensors).")
    detected = detect_version(folder, config)
    if version == "chatglm2" and detected == "chatglm3" and _names_role_tokens(folder):
        raise ModelUnavailable(f"{folder} is a ChatGLM3 checkpoint (its tokenizer files name ChatGLM3's role "
                               "tokens, <|user|>), not ChatGLM2 as --version chatglm2 says: its prompts would be "
                               "in the wrong format. Leave --version out to detect it.")
    version = version or detected
    scales_base = rope_scales_base(folder)
    return ChatGLMSource(folder=folder, config=config, version=version, weight_files=tuple(files),
                         rope_scales_base=version == "chatglm3" if scales_base is None else scales_base)


def rope_scales_base(folder: Path) -> bool | None:
    """Whether the checkpoint's own code applies ``rope_ratio`` to the rotary base (ChatGLM3-6B-32k) or to the
    positions (ChatGLM2-6B-32k); None when its ``modeling_chatglm.py`` is absent or does not say.

    The prompt format is told from names (``detect_version``), which a fine-tune can lose; the code that
    ``save_pretrained`` copies beside the weights is what the model was trained with.
    """
    path = Path(folder) / "modeling_chatglm.py"
    try:
        code = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        return None
    if re.search(r"\bbase\s*=\s*base\s*\*\s*self\.rope_ratio", code):
        return True
    if re.search(r"\)\s*/\s*self\.rope_ratio", code):
        return False
    return None


def _only_prefix_encoder(files: list[Path]) -> bool:
    """True when the weights are a P-tuning prefix encoder's alone (stops at the first other weight)."""
    return bool(files) and all(key.startswith("transformer.prefix_encoder.")
                               for path in files for key, _ in iter_tensors(path))
