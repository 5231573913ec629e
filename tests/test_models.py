"""Model settings: embedded, local or hub; missing models name the setting; GGUF parts assembled safely."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kbqa import models
from kbqa.bootstrap import build_llm, resolve_gguf
from kbqa.embeddings import resolve_embedding_model
from kbqa.errors import ModelUnavailable
from kbqa.models import EmbeddedGGUF, assemble_gguf
from kbqa.settings import load_settings


def test_missing_local_folder_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"embedding\.model"):
        resolve_embedding_model(str(tmp_path / "no-such-model"), tmp_path)
    with pytest.raises(ModelUnavailable, match=r"llm\.model"):
        resolve_gguf(str(tmp_path / "no-such.gguf"), tmp_path)


def test_an_embedding_folder_without_a_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"empty holds no model \(no config\.json\); set embedding\.model"):
        resolve_embedding_model(str(tmp_path / "empty"), tmp_path)
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match=r"model\.bin is a file, not a model folder"):
        resolve_embedding_model(str(tmp_path / "model.bin"), tmp_path)


def test_unreachable_hub_id_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match=r"hub is unreachable.*embedding\.model"):
        resolve_embedding_model("shibing624/text2vec-base-chinese", tmp_path)
    # A relative folder that is not there reads as a hub id too: the error names the folder looked for.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable, match=rf"there is no file or folder {tmp_path.resolve()}/models/e5-small"):
        resolve_embedding_model("models/e5-small", tmp_path)
    settings = load_settings(llm={"backend": "transformers", "model": "THUDM/chatglm2-6b"})
    with pytest.raises(ModelUnavailable, match=r"llm\.model"):
        build_llm(settings.llm, tmp_path)


def test_unknown_embedded_names_list_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="embedded:qwen2.5-coder-1.5b-instruct"):
        resolve_gguf("embedded:gpt-5", tmp_path)
    with pytest.raises(ModelUnavailable, match="embedded:multilingual-e5-small"):
        resolve_embedding_model("embedded:bge-m3", tmp_path)


def test_folder_with_several_ggufs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"y")
    with pytest.raises(ModelUnavailable, match="exactly one"):
        resolve_gguf(str(tmp_path), tmp_path / "cache")


def test_a_file_that_is_no_gguf_is_named_before_llama_cpp_reads_it(tmp_path: Path) -> None:
    # llama.cpp's own words for it: "Failed to init server, please check the input params".
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    with pytest.raises(ModelUnavailable, match=r"notes.txt is not a GGUF model \(it does not start with GGUF\)"):
        resolve_gguf(str(tmp_path / "notes.txt"), tmp_path / "cache")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "cut.gguf").write_bytes(b"")
    with pytest.raises(ModelUnavailable, match=r"cut.gguf is not a GGUF model \(it does not start with GGUF; it is "
                                               r"empty\)"):
        resolve_gguf(str(tmp_path / "one"), tmp_path / "cache")
    (tmp_path / "one" / "cut.gguf").write_bytes(b"GGUF\x03\x00")
    assert resolve_gguf(str(tmp_path / "one"), tmp_path / "cache") == tmp_path / "one" / "cut.gguf"


def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes) -> EmbeddedGGUF:
    names = []
    for n, start in enumerate(range(0, len(payload), 7), 1):
        folder = tmp_path / f"part{n}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{n:02d}.bin").write_bytes(payload[start:start + 7])
        names.append(f"part{n}")
    monkeypatch.setattr(models, "package_dir", lambda name: tmp_path / name if (tmp_path / name).exists() else None)
    return EmbeddedGGUF("fake", "fake.gguf", part_packages=tuple(names), size=len(payload),
                        sha256=hashlib.sha256(payload).hexdigest(), install_hint="pip install fake")


def test_parts_are_assembled_in_order_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = bytes(range(50))
    spec = fake_parts(tmp_path, monkeypatch, payload)
    seen: list[tuple[int, int]] = []
    out = assemble_gguf(spec, tmp_path / "cache", "llm.model", progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == payload and seen[-1] == (50, 50)
    assert not list(out.parent.glob("*.partial"))


def test_corrupt_parts_never_leave_a_usable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_parts(tmp_path, monkeypatch, bytes(range(50)))
    (tmp_path / "part3" / "data" / "part03.bin").write_bytes(b"XXXXXXX")
    with pytest.raises(ModelUnavailable, match="sha256"):
        assemble_gguf(spec, tmp_path / "cache", "llm.model")
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_missing_part_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_parts(tmp_path, monkeypatch, bytes(range(50)))
    import shutil

    shutil.rmtree(tmp_path / "part2")
    with pytest.raises(ModelUnavailable, match="part2 is not installed.*pip install fake"):
        assemble_gguf(spec, tmp_path / "cache", "llm.model")
