"""ChatGLM2/3 checkpoints converted to native GlmForCausalLM match an independent reference forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GlmForCausalLM

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.llm.chatglm import convert_chatglm, is_chatglm_checkpoint, is_converted_chatglm, read_marker
from tests.chatglm_fixtures import train_tokenizer, write_checkpoint, write_ptuning
from tests.chatglm_reference import ChatGLM2Reference


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("sp") / "tokenizer.model")


def load(folder: Path) -> GlmForCausalLM:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (a.double() - b.double()).abs()
    if mask is not None:
        diff = diff * mask[..., None]
    return float(diff.max())


IDS = torch.tensor([[401, 403, 17, 250, 33, 120, 7, 399, 64, 65, 10, 20]])


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_converted_model_gives_the_reference_logits(tmp_path: Path, sp_model: Path, fmt: str) -> None:
    config, state = write_checkpoint(tmp_path / "src", sp_model, fmt=fmt)
    model = load(convert_chatglm(tmp_path / "src", tmp_path / "dst"))
    with torch.no_grad():
        logits = model(IDS).logits
    assert max_diff(logits, ChatGLM2Reference(state, config)(IDS)) < 1e-4


def test_left_padded_batch_gives_the_reference_logits(tmp_path: Path, sp_model: Path) -> None:
    config, state = write_checkpoint(tmp_path / "src", sp_model)
    model = load(convert_chatglm(tmp_path / "src", tmp_path / "dst"))
    ids = torch.tensor([[0, 0, 0, 0, 401, 403, 17, 250, 33, 120, 7, 399], IDS[0].tolist()])
    mask = (torch.arange(12) >= torch.tensor([[4], [0]])).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() computes
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
    assert max_diff(logits, ChatGLM2Reference(state, config)(ids, mask), mask) < 1e-4


@pytest.mark.parametrize(("version", "rope"), [
    ("chatglm2", {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),  # chatglm2-6b-32k
    ("chatglm3", {"rope_type": "default", "rope_theta": 40000.0}),  # chatglm3-6b-32k (ratio 50 there)
])
def test_rope_ratio_applies_as_each_version_applies_it(tmp_path: Path, sp_model: Path, version: str,
                                                       rope: dict[str, object]) -> None:
    config, state = write_checkpoint(tmp_path / "src", sp_model, version=version, fmt="safetensors",
                                     shards=1, rope_ratio=4)
    model = load(convert_chatglm(tmp_path / "src", tmp_path / "dst"))
    assert {k: model.config.rope_parameters.get(k) for k in rope} == rope
    with torch.no_grad():
        logits = model(IDS).logits
    assert max_diff(logits, ChatGLM2Reference(state, config, version)(IDS)) < 1e-4
    # The two readings of rope_ratio really differ on this input, so the check above can fail.
    other = "chatglm3" if version == "chatglm2" else "chatglm2"
    assert max_diff(logits, ChatGLM2Reference(state, config, other)(IDS)) > 1e-3


def test_batched_greedy_generation_with_left_padding_matches_reference(tmp_path: Path,
                                                                        sp_model: Path) -> None:
    config, state = write_checkpoint(tmp_path / "src", sp_model)
    model = load(convert_chatglm(tmp_path / "src", tmp_path / "dst"))
    short = IDS[0, 4:].tolist()
    ids = torch.tensor([[0] * 4 + short, IDS[0].tolist()])
    mask = (ids != 0).long()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[:, ids.shape[1]:]
    reference = ChatGLM2Reference(state, config)
    assert out[0].tolist() == reference.greedy(short, 8)
    assert out[1].tolist() == reference.greedy(IDS[0].tolist(), 8)


def test_conversion_writes_a_native_folder_without_remote_code(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, version="chatglm3")
    folder = convert_chatglm(tmp_path / "src", tmp_path / "dst")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "glm" and config["architectures"] == ["GlmForCausalLM"]
    assert "auto_map" not in config and not list(folder.glob("*.py"))
    assert (folder / "tokenizer.model").is_file()
    assert is_converted_chatglm(folder) and not is_chatglm_checkpoint(folder)
    marker = read_marker(folder)
    assert marker["version"] == "chatglm3"
    pieces = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    assert marker["eos_token_ids"] == [2, pieces + 6, pieces + 8]  # </s>, <|user|>, <|observation|>
    assert isinstance(load(folder), GlmForCausalLM)


def test_progress_reaches_the_total_bytes(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, shards=3)
    calls: list[tuple[int, int]] = []
    convert_chatglm(tmp_path / "src", tmp_path / "dst",
                    progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 3
    assert calls[-1][0] == calls[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, shards=2)
    (tmp_path / "src" / "pytorch_model-00002-of-00002.bin").write_bytes(b"not a torch file")
    with pytest.raises(ModelUnavailable):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_a_conversion_another_process_finished_meanwhile_is_used(tmp_path: Path, sp_model: Path) -> None:
    # Two processes converting the same checkpoint into one cache folder (a server and a CLI command): the one
    # that finishes second keeps the first one's folder instead of failing.
    import os

    write_checkpoint(tmp_path / "src", sp_model, shards=2)
    dst = tmp_path / "cache" / "model"

    def meanwhile(done: int, total: int) -> None:
        if not dst.exists():
            convert_chatglm(tmp_path / "src", tmp_path / "other")
            os.rename(tmp_path / "other", dst)

    assert convert_chatglm(tmp_path / "src", dst, progress=meanwhile) == dst
    assert is_converted_chatglm(dst) and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model"]


def test_existing_destination_is_refused(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize(("override", "message"), [
    ({"position_encoding_2d": True}, "first-generation"),
    ({"quantization_bit": 4}, "pre-quantized"),
    ({"add_bias_linear": True}, "unsupported ChatGLM variant"),
])
def test_unsupported_checkpoints_are_refused_with_the_reason(tmp_path: Path, sp_model: Path,
                                                             override: dict[str, object],
                                                             message: str) -> None:
    write_checkpoint(tmp_path / "src", sp_model, **override)
    with pytest.raises(ModelUnavailable, match=message):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")


def test_unknown_weights_are_refused(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, shards=1)
    state = torch.load(tmp_path / "src" / "pytorch_model.bin", weights_only=True)
    state["transformer.encoder.layers.0.self_attention.query_key_value.weight_scale"] = torch.ones(3)
    torch.save(state, tmp_path / "src" / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="weight_scale"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")


@pytest.mark.parametrize(("field", "change", "message"), [
    ("padded_vocab_size", 8, r"'transformer\.embedding\.word_embeddings\.weight' has shape .* does not fit the sizes"),
    ("ffn_hidden_size", 4, r"'transformer\.encoder\.layers\.\d\.mlp\.dense_\w+\.weight' has shape"),
    ("num_layers", -1, r"'transformer\.encoder\.layers\.1\..*' does not fit config\.json: its layer is beyond "
                       r"num_layers 1"),
    ("num_layers", 1, r"config.json says num_layers = 3, but the weights hold layers 0-1 only \(2 layers\)"),
])
def test_a_config_that_does_not_describe_the_weights_is_refused(tmp_path: Path, sp_model: Path, field: str,
                                                               change: int, message: str) -> None:
    # A config.json from another checkpoint: the native model would fail to load (or drop layers) later.
    config, _ = write_checkpoint(tmp_path / "src", sp_model)
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, field: config[field] + change}))
    with pytest.raises(ModelUnavailable, match=message) as refused:
        convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert "the checkpoint's own" in str(refused.value) or "complete" in str(refused.value)
    assert not (tmp_path / "dst").exists()


def test_missing_qkv_biases_are_refused(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, fmt="safetensors", shards=1)
    state = load_file(tmp_path / "src" / "model.safetensors")
    del state["transformer.encoder.layers.1.self_attention.query_key_value.bias"]
    save_file(state, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(ModelUnavailable, match=r"lacks 3 weights.*layers\.1\.self_attn\.k_proj\.bias"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_bin_shards_are_used_when_the_safetensors_index_names_missing_shards(tmp_path: Path,
                                                                            sp_model: Path) -> None:
    # A download of only *.bin and *.json from a repository that has both formats (chatglm3-6b).
    config, state = write_checkpoint(tmp_path / "src", sp_model, fmt="bin", shards=2)
    index = {"metadata": {}, "weight_map": {"transformer.output_layer.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "src" / "model.safetensors.index.json").write_text(json.dumps(index))
    model = load(convert_chatglm(tmp_path / "src", tmp_path / "dst"))
    with torch.no_grad():
        assert max_diff(model(IDS).logits, ChatGLM2Reference(state, config)(IDS)) < 1e-4
    (tmp_path / "src" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ModelUnavailable, match="incomplete: model-00001-of-00002.safetensors missing .*; "
                                               "pytorch_model-00002-of-00002.bin missing"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst2")


def test_chatglm2_and_chatglm3_are_told_apart(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "v2", sp_model, version="chatglm2")
    write_checkpoint(tmp_path / "v3", sp_model, version="chatglm3")
    assert read_marker(convert_chatglm(tmp_path / "v2", tmp_path / "o2"))["version"] == "chatglm2"
    assert read_marker(convert_chatglm(tmp_path / "v3", tmp_path / "o3"))["version"] == "chatglm3"


def test_a_version_given_against_the_checkpoints_own_tokenizer_says_so(tmp_path: Path, sp_model: Path) -> None:
    # --version chatglm2 on ChatGLM3 converted without a word, with ChatGLM2's prompts and stop tokens; --version
    # chatglm3 on ChatGLM2 failed on a vocabulary count that never named the --version given.
    write_checkpoint(tmp_path / "v3", sp_model, version="chatglm3")
    (tmp_path / "v3" / "tokenization_chatglm.py").write_text(
        'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n', encoding="utf-8")
    with pytest.raises(ModelUnavailable, match=r"is a ChatGLM3 checkpoint .* not ChatGLM2 as --version chatglm2 says"):
        convert_chatglm(tmp_path / "v3", tmp_path / "o3", version="chatglm2")
    write_checkpoint(tmp_path / "v2", sp_model, version="chatglm2")
    with pytest.raises(ModelUnavailable, match=r"role tokens ChatGLM3 adds, as --version chatglm3 says"):
        convert_chatglm(tmp_path / "v2", tmp_path / "o2", version="chatglm3")


def test_a_truncated_safetensors_shard_is_reported_as_incomplete(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, fmt="safetensors", shards=2)
    shard = tmp_path / "src" / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])  # a download cut short
    with pytest.raises(ModelUnavailable, match="Cannot read weights from .*is the file complete"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(("make", "message"), [
    (lambda src: src.rename(src.parent / "gone"), "does not exist"),
    (lambda src: (src / "config.json").write_text("[]"), "config.json does not hold a JSON object"),
    (lambda src: (src / "config.json").write_text("{bad"), "Cannot read .*config.json: Expecting property name"),
    (lambda src: (src / "pytorch_model-00002-of-00002.bin").write_bytes(
        (src / "pytorch_model-00002-of-00002.bin").read_bytes()[:1000]),
     "Cannot read weights from .*pytorch_model-00002-of-00002.bin: .*is the file complete\\? Download it again"),
    (lambda src: (src / "kbqa_chatglm.json").write_text("{}"), "already converted"),
])
def test_a_source_that_is_not_a_checkpoint_says_what_it_is(tmp_path: Path, sp_model: Path, make, message: str
                                                           ) -> None:  # type: ignore[no-untyped-def]
    write_checkpoint(tmp_path / "src", sp_model)
    make(tmp_path / "src")
    with pytest.raises(ModelUnavailable, match=message):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")


def test_a_ptuning_checkpoint_given_as_the_model_points_to_llm_adapter(tmp_path: Path, sp_model: Path) -> None:
    config, _ = write_checkpoint(tmp_path / "base", sp_model)
    write_ptuning(tmp_path / "ptuning", config, projection=True)
    (tmp_path / "ptuning" / "tokenizer.model").write_bytes(sp_model.read_bytes())  # the recipe saves it too
    with pytest.raises(ModelUnavailable, match="P-tuning v2 checkpoint .* set llm.adapter to it"):
        convert_chatglm(tmp_path / "ptuning", tmp_path / "dst")


def test_a_destination_that_cannot_be_written_is_a_clear_error(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match="Cannot write the converted model to .*a-file/dst"):
        convert_chatglm(tmp_path / "src", tmp_path / "a-file" / "dst")


def test_a_destination_inside_the_checkpoint_is_refused(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model)
    with pytest.raises(ConfigError, match="is inside the checkpoint folder .*: choose a folder outside it"):
        convert_chatglm(tmp_path / "src", tmp_path / "src" / "native")
    assert not (tmp_path / "src" / "native").exists()


def test_a_disk_without_room_is_refused_before_converting(tmp_path: Path, sp_model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    write_checkpoint(tmp_path / "src", sp_model)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(ConfigError, match=r"needs about 0\.\d GiB, but the disk of .* has 0\.0 GiB free"):
        convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_converted_files_are_readable_by_other_accounts(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, shards=2)
    out = convert_chatglm(tmp_path / "src", tmp_path / "dst")
    assert {oct(p.stat().st_mode & 0o044) for p in out.glob("*.safetensors")} == {oct(0o044)}
    assert read_marker(out)["source"] == str((tmp_path / "src").resolve())


def test_the_prompt_format_can_be_forced_when_names_do_not_tell(tmp_path: Path, sp_model: Path) -> None:
    from kbqa.cli import main

    src = tmp_path / "checkpoint-3000"  # a ChatGLM3 fine-tune saved without the names that tell
    write_checkpoint(src, sp_model, version="chatglm3")
    for name in ("config.json", "tokenizer_config.json"):
        (src / name).write_text((src / name).read_text().replace("chatglm3", "checkpoint-3000"))
    assert main(["convert-chatglm", str(src), str(tmp_path / "guessed")]) == 0
    assert read_marker(tmp_path / "guessed")["version"] == "chatglm2"
    assert main(["convert-chatglm", str(src), str(tmp_path / "out"), "--version", "chatglm3"]) == 0
    assert read_marker(tmp_path / "out")["version"] == "chatglm3"


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4a2b3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819\nsize 1018370\n")


def test_a_checkpoint_cloned_without_git_lfs_says_to_pull_its_files(tmp_path: Path, sp_model: Path) -> None:
    # `git clone` without Git LFS leaves ~130-byte pointer files where the tokenizer and the shards should be: read
    # as they are, they gave "not a SentencePiece tokenizer model" and torch's advice to unpickle them.
    src = tmp_path / "chatglm2-6b"
    write_checkpoint(src, sp_model)
    for name in ("tokenizer.model", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"):
        (src / name).write_text(LFS_POINTER)
    pointers = r"(pytorch_model-0000\d-of-00002.bin, ){2}tokenizer.model in .* are Git LFS pointers"
    with pytest.raises(ModelUnavailable, match=pointers + r".*run `git lfs pull` in"):
        convert_chatglm(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("code", "forced", "rope", "reading"), [
    ("        base = base * self.rope_ratio\n", "chatglm2", {"rope_type": "default", "rope_theta": 40000.0},
     "chatglm3"),
    ("        seq_idx = torch.arange(seq_len, dtype=torch.float) / self.rope_ratio\n", None,
     {"rope_type": "linear", "factor": 4.0}, "chatglm2"),
])
def test_rope_ratio_follows_the_checkpoints_own_code_over_its_prompt_format(
        tmp_path: Path, sp_model: Path, code: str, forced: str | None, rope: dict[str, object], reading: str) -> None:
    # Where the names (or a --version given wrongly) say one version, the modeling_chatglm.py the model was
    # trained with, which save_pretrained copies beside a fine-tune's weights, says how rope_ratio applies.
    src = tmp_path / "chatglm3-6b-32k"
    config, state = write_checkpoint(src, sp_model, version="chatglm3", fmt="safetensors", shards=1, rope_ratio=4)
    (src / "modeling_chatglm.py").write_text("class RotaryEmbedding:\n    def forward_impl(self, seq_len, base):\n"
                                             + code)
    model = load(convert_chatglm(src, tmp_path / "dst", version=forced))  # type: ignore[arg-type]
    assert {k: model.config.rope_parameters.get(k) for k in rope} == rope
    with torch.no_grad():
        assert max_diff(model(IDS).logits, ChatGLM2Reference(state, config, reading)(IDS)) < 1e-4


def test_a_destination_on_no_disk_says_it_cannot_be_written_not_that_the_disk_is_full(tmp_path: Path,
                                                                                     sp_model: Path) -> None:
    # /proc reports 0 bytes free of 0: "the disk of /proc has 0.0 GiB free" sent the user looking for space.
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    write_checkpoint(tmp_path / "src", sp_model)
    with pytest.raises(ConfigError, match=r"Cannot write the converted model to /proc/kbqa-native \(") as caught:
        convert_chatglm(tmp_path / "src", Path("/proc/kbqa-native"))
    assert "GiB free" not in str(caught.value), caught.value
