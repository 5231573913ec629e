"""Resolving ``llm.model`` to a native folder; a GGUF or a ChatGLM checkpoint is converted once, cached."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kbqa.errors import ConfigError, KBQAError, ModelUnavailable
from kbqa.fileio import remove_abandoned, staged_folder
from kbqa.llm import chatglm
from kbqa.models import EMBEDDED_LLMS, assemble_gguf, embedded_name, is_embedded, resolve_local_or_hub

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_HUB_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenization_chatglm.py"]


def prepare_model(spec: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A native folder for ``llm.model``: converted (once, cached) when it is a GGUF or a ChatGLM checkpoint.

    ``spec`` is an ``embedded:`` GGUF, a ``.gguf`` file, a model folder, a ChatGLM2/3 checkpoint folder or
    a hub id. Conversions land in ``cache_dir/models`` under a fingerprint of their source, written under
    a temporary name and then renamed, so a half-written one is never used.

    Raises:
        ConfigError: an unknown embedded name.
        ModelUnavailable: the model cannot be found or read.
    """
    if is_embedded(spec):
        name = embedded_name(spec)
        if name not in EMBEDDED_LLMS:
            raise ConfigError(f"llm.model = '{spec}': no such embedded model ({', '.join(EMBEDDED_LLMS)}).")
        gguf = assemble_gguf(EMBEDDED_LLMS[name], cache_dir, "llm.model", progress)
        return convert_gguf(gguf, cache_dir, progress)
    path = Path(spec).expanduser()
    if not path.exists():
        path = _download(spec, "llm.model")
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path, cache_dir, progress)
        raise ModelUnavailable(f"llm.model = '{spec}' is a file but not a .gguf; point it at a model folder.")
    if chatglm.is_converted_chatglm(path):
        return path
    if chatglm.is_chatglm_checkpoint(path):
        return convert_chatglm_cached(path, cache_dir, progress, name=Path(spec).name)
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0], cache_dir, progress)
        raise ModelUnavailable(f"{path} has no config.json: not a transformers model folder"
                               + (" (set llm.model to one of its .gguf files)" if ggufs else "."))
    return path


def fingerprint(files: Sequence[Path]) -> str:
    """A quick key for source files: names, sizes, modification times, and the first and last MiB of each.

    Hashing all of a 12 GB checkpoint would cost a minute at every start; the modification time catches
    a file saved again in place with the same size (a re-saved fine-tune), which the ends alone may not.
    """
    digest = hashlib.sha256(f"kbqa-convert-{chatglm.CONVERTER_VERSION}".encode())
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        size = stat.st_size
        digest.update(f"{path.name}:{size}:{stat.st_mtime_ns}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def convert_gguf(gguf: Path, cache_dir: Path, progress: Progress | None = None) -> Path:
    """A GGUF file dequantized once into a bf16 safetensors folder in ``cache_dir`` (reused afterwards)."""
    dst = Path(cache_dir) / "models" / f"{gguf.stem}-hf-{fingerprint([gguf])[:16]}"
    if (dst / "config.json").is_file():
        return dst
    log.info("converting %s into %s (once)", gguf, dst)
    if progress:
        progress(0, 1)
    try:
        with staged_folder(dst, lambda d: (d / "config.json").is_file()) as tmp:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model.hf_quantizer = None  # type: ignore[assignment]  # plain tensors now: save them as such
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except Exception as exc:
        raise ModelUnavailable(f"Cannot convert {gguf} with transformers' GGUF reader: {exc}") from exc
    if progress:
        progress(1, 1)
    return dst


def convert_chatglm_cached(src: Path, cache_dir: Path, progress: Progress | None = None,
                           name: str | None = None) -> Path:
    """A ChatGLM2/3 checkpoint converted once into ``cache_dir`` (keyed by its fingerprint).

    Once a changed checkpoint is converted, the cached conversions of its earlier versions (same source
    folder) are removed: each is as big as the checkpoint.
    """
    source = chatglm.read_source(src)
    names = ("config.json", "tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py")
    files = [*source.weight_files, *(p for n in names if (p := src / n).is_file())]
    stem = f"{name or src.resolve().name}-glm-"
    dst = Path(cache_dir) / "models" / f"{stem}{fingerprint(files)[:16]}"
    if chatglm.is_converted_chatglm(dst):
        return dst
    chatglm.convert_chatglm(src, dst, progress, elsewhere="free some space, or set paths.cache_dir "
                            "(KBQA_PATHS__CACHE_DIR) to a folder you can write to on a disk with room, or convert "
                            "it elsewhere with "
                            "`kbqa convert-chatglm` and set llm.model to the result")
    for old in dst.parent.glob(f"{stem}*"):
        if old == dst or not chatglm.is_converted_chatglm(old):
            continue
        try:
            recorded = chatglm.read_marker(old).get("source")
        except KBQAError:  # not ours to judge (another user's, damaged): leave it
            continue
        if recorded == str(src.resolve()):
            log.info("removing %s, the conversion of an earlier version of %s", old, src)
            shutil.rmtree(old, ignore_errors=True)
    remove_abandoned(dst.parent / f"{stem}*")  # conversions of earlier versions that were killed
    return dst


def _download(spec: str, setting: str) -> Path:
    """A hub model's files, with one weight format: safetensors when it has them, else ``.bin``."""
    for patterns in (["*.safetensors"], ["*.bin"]):
        folder = resolve_local_or_hub(spec, setting, allow_patterns=_HUB_FILES + patterns)
        if any(folder.glob(patterns[0])):
            break
    return folder
