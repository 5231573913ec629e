"""Settings: defaults, TOML, environment precedence, and errors that name the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kbqa.errors import ConfigError
from kbqa.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray kbqa.toml
    for var in ("KBQA_CONFIG", "KBQA_LLM__MODEL", "KBQA_RETRIEVAL__TOP_K", "KBQA_SERVER__PORT"):
        monkeypatch.delenv(var, raising=False)


def test_defaults_use_embedded_models_on_loopback() -> None:
    s = load_settings()
    assert s.embedding.model.startswith("embedded:")
    assert s.llm.model.startswith("embedded:")
    assert s.server.host == "127.0.0.1"


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "custom.toml"
    cfg.write_text('[retrieval]\ntop_k = 7\n[llm]\nmodel = "from-toml"\n', encoding="utf-8")
    monkeypatch.setenv("KBQA_LLM__MODEL", "from-env")
    s = load_settings(cfg)
    assert s.retrieval.top_k == 7
    assert s.llm.model == "from-env"


def test_kbqa_toml_in_working_folder_is_read() -> None:
    Path("kbqa.toml").write_text("[server]\nport = 9001\n", encoding="utf-8")
    assert load_settings().server.port == 9001


def test_kbqa_config_variable_points_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "elsewhere.toml"
    cfg.write_text("[splitter]\nchunk_size = 300\nchunk_overlap = 30\n", encoding="utf-8")
    monkeypatch.setenv("KBQA_CONFIG", str(cfg))
    assert load_settings().splitter.chunk_size == 300


def test_explicit_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_RETRIEVAL__TOP_K", "9")
    assert load_settings(retrieval={"top_k": 2}).retrieval.top_k == 2


def test_invalid_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_RETRIEVAL__TOP_K", "lots")
    with pytest.raises(ConfigError, match="retrieval.top_k"):
        load_settings()


def test_overlap_not_below_size_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text("[splitter]\nchunk_size = 100\nchunk_overlap = 100\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="chunk_overlap") as caught:
        load_settings(cfg)
    assert str(caught.value).endswith(f"Fix {cfg}.")  # no variable was named, so none is blamed
    assert "chunk_overlap (100) must be smaller than splitter.chunk_size (100)" in str(caught.value)


def test_a_bad_variable_blames_the_variable_not_a_settings_file_that_is_fine(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text("[retrieval]\ntop_k = 4\n[splitter]\nchunk_size = 100\n", encoding="utf-8")
    monkeypatch.setenv("KBQA_RETRIEVAL__TOP_K", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert str(caught.value).endswith("Fix the KBQA_* variable named.")  # k.toml's top_k = 4 is overridden
    monkeypatch.delenv("KBQA_RETRIEVAL__TOP_K")
    monkeypatch.setenv("KBQA_SPLITTER__CHUNK_OVERLAP", "600")  # at fault with the file's chunk_size: both named
    with pytest.raises(ConfigError, match=r"splitter \(KBQA_SPLITTER__CHUNK_OVERLAP\): .*\(600\).*\(100\)\)\. "
                                          rf"Fix {re.escape(str(cfg))} or the KBQA_\* variable named\."):
        load_settings(cfg)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text("[llm]\nmodle = 'typo'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="modle"):
        load_settings(cfg)


def test_a_settings_file_that_is_not_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "kbqa.toml"
    bad.write_text("[llm\nmodel = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_a_toml_boolean_fills_only_a_boolean_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "kbqa.toml"
    cfg.write_text("[retrieval]\ntop_k = true\n[ingest]\nocr = false\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="retrieval.top_k: .*expected a number, got the boolean true"):
        load_settings(cfg)
    cfg.write_text("[ingest]\nocr = false\n", encoding="utf-8")
    assert load_settings(cfg).ingest.ocr is False


@pytest.mark.parametrize(("variable", "message"), [
    ("KBQA_PATH__KNOWLEDGE_ROOT", "KBQA_PATH__KNOWLEDGE_ROOT names no kbqa setting.*Did you mean KBQA_PATHS__"),
    ("KBQA_RETRIEVAL_TOP_K", "KBQA_RETRIEVAL_TOP_K names no kbqa setting"),
    ("KBQA_LLM", "KBQA_LLM names a whole settings section; set one setting at a time instead.*KBQA_LLM__MODEL"),
])
def test_a_variable_that_names_no_one_setting_is_an_error(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                          message: str) -> None:
    monkeypatch.setenv(variable, "5")
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_a_misspelt_name_in_the_settings_file_gets_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "kbqa.toml"
    cfg.write_text('[retreival]\ntop_k = 2\n[llm]\nmodle = "x"\nzzz = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    message = str(caught.value)
    assert "retreival: Extra inputs are not permitted (did you mean retrieval?)" in message
    assert "llm.modle: Extra inputs are not permitted (did you mean llm.model?)" in message
    assert "llm.zzz: Extra inputs are not permitted;" in message


def test_a_bad_environment_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_RETRIEVAL__TOP_K", "five")
    with pytest.raises(ConfigError, match=r"retrieval.top_k \(KBQA_RETRIEVAL__TOP_K\).*the KBQA_\* variable named"):
        load_settings()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_refused_not_read_as_the_working_folder(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KBQA_PATHS__KNOWLEDGE_ROOT", value)
    with pytest.raises(ConfigError, match=r"paths.knowledge_root \(KBQA_PATHS__KNOWLEDGE_ROOT\).*is empty"):
        load_settings()


def test_paths_expand_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KBQA_PATHS__KNOWLEDGE_ROOT", "~/kb")
    assert load_settings().paths.knowledge_root == tmp_path / "home" / "kb"


@pytest.mark.parametrize(("content", "message"), [
    (b'a = "\xff"\n', "not UTF-8"),
    (b"\xef\xbb\xbf[retrieval]\ntop_k = 4\n", "byte-order mark"),
])
def test_an_unreadable_settings_file_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "kbqa.toml").write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_the_embedding_device_must_be_a_torch_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_EMBEDDING__DEVICE", "gpu")
    with pytest.raises(ConfigError, match=r"embedding.device .*'gpu' is no device: give cpu, mps, cuda or cuda:N"):
        load_settings()  # not pydantic's regular expression
    monkeypatch.setenv("KBQA_EMBEDDING__DEVICE", "cuda:1")
    assert load_settings().embedding.device == "cuda:1"


def test_slips_in_settings_get_one_plain_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A list variable written plainly was a 50-line traceback; a setting outside its section, a folder named
    # kbqa.toml, an empty model and a cross-setting rule read unhelpfully or in pydantic's words.
    monkeypatch.setenv("KBQA_SERVER__ALLOWED_HOSTS", "kb.lan")
    with pytest.raises(ConfigError, match=r"KBQA_SERVER__ALLOWED_HOSTS must be a JSON list, e.g. .*\[\"kb.lan\"\]"):
        load_settings()
    monkeypatch.setenv("KBQA_SERVER__ALLOWED_HOSTS", '["kb.lan"]')
    assert load_settings().server.allowed_hosts == ["kb.lan"]
    top = tmp_path / "top.toml"
    top.write_text("chunk_size = 300\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"belongs under \[splitter\]: splitter.chunk_size"):
        load_settings(top)
    overlap = tmp_path / "overlap.toml"
    overlap.write_text("[splitter]\nchunk_size = 100\nchunk_overlap = 100\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(overlap)
    assert "Value error" not in str(caught.value) and "chunk_overlap (100) must be smaller" in str(caught.value)
    Path("kbqa.toml").mkdir()
    with pytest.raises(ConfigError, match="kbqa.toml is a folder, not a file"):
        load_settings()
    Path("kbqa.toml").rmdir()
    monkeypatch.setenv("KBQA_EMBEDDING__MODEL", " ")
    with pytest.raises(ConfigError, match=r"embedding.model \(KBQA_EMBEDDING__MODEL\): is empty"):
        load_settings()
    monkeypatch.delenv("KBQA_EMBEDDING__MODEL")
    assert load_settings(llm={"adapter": "none"}, retrieval={"reranker": "off"}).llm.adapter is None
