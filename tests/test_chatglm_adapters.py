"""Fine-tuned ChatGLM adapters: P-tuning v2 prefixes and LoRA, checked against the reference forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kbqa.errors import ConfigError, KBQAError
from kbqa.llm.transformers_backend import build_transformers_llm
from kbqa.schema import ChatMessage
from tests.chatglm_fixtures import (
    greedy_params,
    llm_settings,
    merge_lora,
    train_tokenizer,
    write_checkpoint,
    write_lora,
    write_ptuning,
)
from tests.chatglm_reference import ChatGLM2Reference

QUESTION = [ChatMessage("user", "你好，请介绍一下 ChatGLM2。")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("chatglm")
    sp_model = train_tokenizer(root / "tokenizer.model")
    config, state = write_checkpoint(root / "chatglm2", sp_model)
    return root / "chatglm2", config, state


def reply_ids(llm, reference: ChatGLM2Reference, steps: int, prefix=None) -> tuple[str, list[int]]:
    """The reference's greedy reply to QUESTION, as ids and as the text the backend should stream."""
    prompt = llm.prompt_ids(QUESTION, steps)
    ids = reference.greedy(prompt, steps, prefix=prefix, stop=llm.stop_token_ids)
    return llm.codec.visible_reply(llm.codec.decode(ids), True), ids


@pytest.mark.parametrize("projection", [False, True])
def test_ptuning_prefix_changes_the_reply_and_matches_the_reference(tmp_path: Path, checkpoint: tuple,
                                                                    projection: bool) -> None:
    src, config, state = checkpoint
    weights = write_ptuning(tmp_path / "ptuning", config, pre_seq_len=4, projection=projection)
    settings = llm_settings(src, adapter=str(tmp_path / "ptuning"))
    plain = build_transformers_llm(llm_settings(src), tmp_path / "cache")
    tuned = build_transformers_llm(settings, tmp_path / "cache")
    reference = ChatGLM2Reference(state, config)
    embedding = weights["transformer.prefix_encoder.embedding.weight"]
    if projection:
        hidden = torch.tanh(embedding @ weights["transformer.prefix_encoder.trans.0.weight"].T
                            + weights["transformer.prefix_encoder.trans.0.bias"])
        embedding = (hidden @ weights["transformer.prefix_encoder.trans.2.weight"].T
                     + weights["transformer.prefix_encoder.trans.2.bias"])
    prefix = reference.prefix(embedding)

    ids = torch.tensor([tuned.prompt_ids(QUESTION, 20)])
    with torch.no_grad():
        tuned_logits, plain_logits = tuned.model(ids).logits, plain.model(ids).logits
    assert float((tuned_logits.double() - reference(ids, prefix=prefix)).abs().max()) < 1e-4
    assert float((tuned_logits - plain_logits).abs().max()) > 1e-2

    text, tokens = reply_ids(tuned, reference, 20, prefix)
    assert tuned.generate(QUESTION, greedy_params(settings)) == text
    assert tuned.last_usage.completion_tokens == len(tokens)
    assert reply_ids(plain, reference, 20)[1] != tokens


def test_ptuning_prefix_of_another_model_shape_is_refused(tmp_path: Path, checkpoint: tuple) -> None:
    src, config, _ = checkpoint
    write_ptuning(tmp_path / "ptuning", {**config, "num_layers": 3})
    with pytest.raises(ConfigError, match="does not fit this model: each of its 4 prefix rows holds"):
        build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "ptuning")), tmp_path / "cache")


def test_a_ptuning_folder_whose_config_does_not_match_its_weights_says_so(tmp_path: Path, checkpoint: tuple) -> None:
    # pre_seq_len 8 in config.json, 4 rows in the weights: the folder is inconsistent, not the base model wrong.
    src, config, _ = checkpoint
    write_ptuning(tmp_path / "ptuning", config, pre_seq_len=4)
    saved = json.loads((tmp_path / "ptuning" / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "ptuning" / "config.json").write_text(json.dumps({**saved, "pre_seq_len": 8}), encoding="utf-8")
    with pytest.raises(ConfigError, match="is inconsistent: its config.json says pre_seq_len 8, its prefix encoder "
                                          "holds 4 rows"):
        build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "ptuning")), tmp_path / "cache")


@pytest.mark.parametrize("ends", [False, True])
def test_lora_on_chatglm_module_names_matches_the_reference_with_merged_weights(tmp_path: Path,
                                                                                checkpoint: tuple,
                                                                                ends: bool) -> None:
    src, config, state = checkpoint
    lora = write_lora(tmp_path / "lora", config, rank=4, alpha=8.0, ends=ends)
    llm = build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "lora")), tmp_path / "cache")
    reference = ChatGLM2Reference(merge_lora(state, lora, rank=4, alpha=8.0), config)
    ids = torch.tensor([llm.prompt_ids(QUESTION, 20)])
    with torch.no_grad():
        logits = llm.model(ids).logits
    assert type(llm.model).__name__ == "GlmForCausalLM"  # merged, no peft wrapper left
    assert float((logits.double() - reference(ids)).abs().max()) < 1e-4
    assert float((logits.double() - ChatGLM2Reference(state, config)(ids)).abs().max()) > 1e-2


def test_a_lora_target_the_converted_model_lacks_is_refused(tmp_path: Path, checkpoint: tuple) -> None:
    src, config, _ = checkpoint
    write_lora(tmp_path / "lora", config)
    adapter_config = tmp_path / "lora" / "adapter_config.json"
    adapter_config.write_text(adapter_config.read_text().replace('"dense_h_to_4h"', '"dense_h_to_4h", "rotary"'))
    with pytest.raises(ConfigError, match=r"\['rotary'\] have no counterpart"):
        build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "lora")), tmp_path / "cache")


def test_an_adapter_folder_of_unknown_kind_is_refused(tmp_path: Path, checkpoint: tuple) -> None:
    (tmp_path / "adapter").mkdir()
    with pytest.raises(ConfigError, match="neither a LoRA"):
        build_transformers_llm(llm_settings(checkpoint[0], adapter=str(tmp_path / "adapter")),
                               tmp_path / "cache")


@pytest.mark.parametrize("peft_type", ["PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"])
def test_a_peft_adapter_other_than_lora_is_refused_naming_the_setting(tmp_path: Path, checkpoint: tuple,
                                                                      peft_type: str) -> None:
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"prompt_embeddings": torch.zeros(4, 64)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "num_virtual_tokens": 4}))
    with pytest.raises(ConfigError, match=rf"llm.adapter = .* is a peft {peft_type} adapter, which cannot be merged"):
        build_transformers_llm(llm_settings(checkpoint[0], adapter=str(folder)), tmp_path / "cache")


def test_adapter_errors_name_the_setting_that_gave_the_folder(tmp_path: Path, checkpoint: tuple) -> None:
    import json

    src, config, _ = checkpoint
    write_ptuning(tmp_path / "ptuning", {**config, "num_layers": 3})  # another model's prefix
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))  # no weights beside it
    for adapter in (tmp_path / "ptuning", lora):
        with pytest.raises(KBQAError, match=rf"llm\.adapter = '{adapter}'"):
            build_transformers_llm(llm_settings(src, adapter=str(adapter)), tmp_path / "cache")


def test_a_chatglm_lora_trained_on_another_base_model_is_refused_naming_it(tmp_path: Path, checkpoint: tuple
                                                                           ) -> None:
    src, config, _ = checkpoint
    write_lora(tmp_path / "lora", {**config, "num_attention_heads": 8})  # a bigger model's fused QKV rows
    with pytest.raises(ConfigError, match=r"LoRA adapter .*lora does not fit this model .* another base model"):
        build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "lora")), tmp_path / "cache")


@pytest.mark.parametrize(("targets", "weights"), [
    (["c_attn"], {"transformer.h.0.attn.c_attn": (4, 64, 192)}),  # a GPT-2 LoRA: no such module here
    (["q_proj"], {"model.layers.0.self_attn.q_proj": (4, 896, 64)}),  # a Qwen LoRA: other shapes
])
def test_a_lora_for_another_architecture_is_refused_naming_the_setting(
        tmp_path: Path, checkpoint: tuple, targets: list[str], weights: dict[str, tuple[int, int, int]]) -> None:
    import json

    from safetensors.torch import save_file

    folder = tmp_path / "lora"
    folder.mkdir()
    tensors = {}
    for module, (rank, fan_in, fan_out) in weights.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.zeros(rank, fan_in)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.zeros(fan_out, rank)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": targets,
        "bias": "none", "inference_mode": True}))
    with pytest.raises(ConfigError, match=r"llm.adapter = .* does not fit llm.model: was it trained on another"):
        build_transformers_llm(llm_settings(checkpoint[0], adapter=str(folder)), tmp_path / "cache")


@pytest.mark.parametrize(("layers", "message"), [
    (4, "holds weights for layer 4; the model has 2 layers"),  # a deeper model's: peft would drop layers 2-3
    (1, "has no weights for some of the modules it names"),  # fewer layers than the model's
])
def test_a_lora_for_another_number_of_layers_is_refused(tmp_path: Path, checkpoint: tuple, layers: int,
                                                        message: str) -> None:
    src, config, _ = checkpoint
    assert config["num_layers"] == 2
    write_lora(tmp_path / "lora", {**config, "num_layers": layers})
    with pytest.raises(ConfigError, match=f"llm.adapter = .* does not fit llm.model.*{message}"):
        build_transformers_llm(llm_settings(src, adapter=str(tmp_path / "lora")), tmp_path / "cache")


def test_a_whole_fine_tune_with_a_ptuning_prefix_says_at_every_load_that_it_is_unused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import json

    from safetensors.torch import load_file, save_file

    sp_model = train_tokenizer(tmp_path / "tokenizer.model")
    config, _ = write_checkpoint(tmp_path / "full", sp_model, fmt="safetensors", shards=1)
    weights = load_file(str(tmp_path / "full" / "model.safetensors"))  # the ptuning recipe's whole-model save
    weights.update(write_ptuning(tmp_path / "prefix", config))
    save_file(weights, str(tmp_path / "full" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "full" / "config.json").write_text(json.dumps({**config, "pre_seq_len": 4}), encoding="utf-8")
    for _ in range(2):  # the second load uses the cached conversion
        caplog.clear()
        with caplog.at_level("WARNING", logger="kbqa"):
            build_transformers_llm(llm_settings(tmp_path / "full"), tmp_path / "cache")
        assert "holds a P-tuning prefix, which is not used: set llm.adapter" in caplog.text
