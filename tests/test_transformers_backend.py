"""The transformers backend: model resolution and caching, placement, prompt trimming, streaming, service."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from kbqa.errors import ConfigError, ModelUnavailable
from kbqa.llm import chatglm, model_cache
from kbqa.llm.base import ABANDONED, LLM, GenerationParams
from kbqa.llm.model_cache import prepare_model
from kbqa.llm.placement import Machine, Placement, choose_placement
from kbqa.llm.prompting import fit_prompt
from kbqa.llm.transformers_backend import TransformersLLM, build_transformers_llm, generation_kwargs
from kbqa.schema import ChatMessage
from tests.chatglm_fixtures import greedy_params, llm_settings, train_tokenizer, write_checkpoint
from tests.chatglm_reference import ChatGLM2Reference
from tests.tiny_causal_lm import write_tiny_causal_lm

GIB = 1 << 30
QUESTION = [ChatMessage("system", "You answer from the context."), ChatMessage("user", "What is 知识库？")]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("sp") / "tokenizer.model")


@pytest.fixture(scope="module")
def glm2(tmp_path_factory: pytest.TempPathFactory, sp_model: Path) -> tuple[Path, dict, dict]:
    folder = tmp_path_factory.mktemp("ckpt") / "chatglm2-6b"
    config, state = write_checkpoint(folder, sp_model)
    return folder, config, state


@pytest.fixture(scope="module")
def llm(glm2: tuple, tmp_path_factory: pytest.TempPathFactory) -> TransformersLLM:
    return build_transformers_llm(llm_settings(glm2[0]), tmp_path_factory.mktemp("cache"))


# ---------------------------------------------------------------- device, dtype, quantization

def place(machine: Machine, n_params: int = 1_000_000, **settings: object) -> Placement:
    values = {"device": "auto", "dtype": "auto", **settings}
    return choose_placement(llm_settings("x", **values), machine, n_params)


def test_auto_device_prefers_cuda_then_mps_then_cpu() -> None:
    assert place(Machine(cuda=True, mps=True, cuda_bf16=True)).device == "cuda"
    assert place(Machine(mps=True)).device == "mps"
    assert place(Machine()).device == "cpu"


def test_auto_dtype_is_bf16_on_recent_gpus_fp16_on_older_ones_and_fp32_on_cpu() -> None:
    assert place(Machine(cuda=True, cuda_bf16=True)).dtype == "bf16"
    assert place(Machine(cuda=True, cuda_bf16=False)).dtype == "fp16"
    assert place(Machine(free_memory={"cpu": 64 * GIB})).dtype == "fp32"


def test_auto_dtype_on_cpu_falls_back_to_bf16_when_fp32_does_not_fit() -> None:
    six_b = 6_243_584_000
    assert place(Machine(free_memory={"cpu": 22 * GIB}), six_b).dtype == "bf16"


@pytest.mark.parametrize(("machine", "settings", "message"), [
    (Machine(), {"quantization": "4bit"}, "needs a CUDA GPU"),
    (Machine(mps=True), {"quantization": "8bit"}, "needs a CUDA GPU"),
    (Machine(cuda=True, cuda_bf16=True), {"quantization": "4bit"}, r"pip install -e '\.\[gpu\]'"),
    (Machine(), {"dtype": "fp16"}, "fp16' is not usable on a CPU"),
    (Machine(), {"device": "cuda"}, "sees no CUDA GPU"),
    (Machine(), {"device": "mps"}, "MPS is not available"),
    (Machine(cuda=True), {"dtype": "bf16"}, "no bf16 support"),
])
def test_choices_that_cannot_work_here_are_refused_clearly(machine: Machine, settings: dict,
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        place(machine, **settings)


def test_a_gpu_can_be_chosen_by_number_and_its_own_free_memory_counts() -> None:
    two_gpus = Machine(cuda=True, cuda_bf16=True, cuda_count=2,
                       free_memory={"cuda": 2 * GIB, "cuda:0": 2 * GIB, "cuda:1": 20 * GIB})
    six_b = 6_243_584_000
    assert place(two_gpus, six_b, device="cuda:1") == Placement(device="cuda:1", dtype="bf16")
    with pytest.raises(ConfigError, match="only 2.0 GiB is free"):
        place(two_gpus, six_b, device="cuda:0")
    with pytest.raises(ConfigError, match=r"sees 2 CUDA GPUs here \(cuda:0 to cuda:1"):
        place(two_gpus, device="cuda:2")
    with pytest.raises(ConfigError, match="llm.device = 'cuda:1', but torch sees no CUDA GPU"):
        place(Machine(), device="cuda:1")
    with pytest.raises(ValidationError):
        llm_settings("x", device="gpu1")


def test_quantized_weights_go_to_the_gpu_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kbqa.llm import transformers_backend

    seen: dict = {}
    monkeypatch.setattr(transformers_backend.AutoModelForCausalLM, "from_pretrained",
                        lambda folder, **kwargs: seen.update(kwargs) or torch.nn.Linear(1, 1))
    transformers_backend.load_model(tmp_path, Placement(device="cuda:1", dtype="bf16", quantization="4bit"))
    assert seen["device_map"] == {"": 1}
    transformers_backend.load_model(tmp_path, Placement(device="cuda", dtype="bf16", quantization="8bit"))
    assert seen["device_map"] == {"": 0}
    transformers_backend.load_model(tmp_path, Placement(device="cuda:1", dtype="bf16"))
    assert seen["device_map"] == "cuda:1"


def test_a_model_that_writes_no_text_is_refused_as_the_llm(tmp_path: Path) -> None:
    # An embedding model's folder (BertModel) loaded as a causal LM with a new, random output layer: gibberish
    # answers and no word of why.
    from transformers import BertConfig, BertModel

    from kbqa.llm import transformers_backend

    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable, match=r"holds a BertModel, not a language model that writes text"):
        transformers_backend.load_model(tmp_path, Placement(device="cpu", dtype="fp32"))


def test_not_enough_memory_is_refused_with_a_way_out() -> None:
    gpu_8gb = Machine(cuda=True, cuda_bf16=True, bitsandbytes=True, free_memory={"cuda": int(7.5 * GIB)})
    six_b = 6_243_584_000
    with pytest.raises(ConfigError, match=r"about 12\.2 GiB.*'8bit' or '4bit'"):
        place(gpu_8gb, six_b, dtype="fp16")
    assert place(gpu_8gb, six_b, quantization="8bit").quantization == "8bit"
    gpu_6gb = Machine(cuda=True, cuda_bf16=True, bitsandbytes=True, free_memory={"cuda": int(5.6 * GIB)})
    assert place(gpu_6gb, six_b, quantization="4bit").quantization == "4bit"
    with pytest.raises(ConfigError, match="only 5.6 GiB is free"):
        place(gpu_6gb, six_b, quantization="8bit")


def test_a_checkpoint_too_big_for_memory_is_refused_before_it_is_converted(
        glm2: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbqa.llm import transformers_backend

    monkeypatch.setattr(transformers_backend, "detect_machine", lambda: Machine(free_memory={"cpu": 1000}))
    with pytest.raises(ConfigError, match="only 0.0 GiB is free"):
        build_transformers_llm(llm_settings(glm2[0]), tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize(("machine", "settings", "hint"), [
    (Machine(mps=True), {"quantization": "4bit"}, "(KBQA_LLM__QUANTIZATION) = 'none'."),  # no CPU advice on a Mac
    (Machine(cuda=True, cuda_bf16=True, bitsandbytes=True, free_memory={"cuda": GIB}), {"quantization": "4bit"},
     "free some cuda memory"),  # not "use a GPU" on one
])
def test_refusals_give_advice_that_fits_the_machine(machine: Machine, settings: dict, hint: str) -> None:
    with pytest.raises(ConfigError) as refused:
        place(machine, 6_243_584_000, **settings)
    assert hint in str(refused.value) and "use a GPU" not in str(refused.value)


# ---------------------------------------------------------------- prompt trimming

class FakeCodec:
    """One token per character; a message costs its characters plus 2."""

    eos_token_ids = (0,)
    pad_token_id = 0

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        return [ord(c) for m in messages for c in f"{m.role[0]}:{m.content}"]

    def encode_text(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def visible_reply(self, text: str, finished: bool) -> str | None:
        return text


def decoded(ids: list[int]) -> str:
    return FakeCodec().decode(ids)


def test_trimming_drops_the_oldest_turns_first_and_keeps_system_and_last_question() -> None:
    history = [ChatMessage("user", "old question 1"), ChatMessage("assistant", "old answer 1"),
               ChatMessage("user", "old question 2"), ChatMessage("assistant", "old answer 2")]
    messages = [ChatMessage("system", "be brief"), *history, ChatMessage("user", "new question")]
    everything = fit_prompt(messages, FakeCodec(), 1000)
    assert len(everything) == 84
    kept = decoded(fit_prompt(messages, FakeCodec(), 70))
    assert kept == "s:be briefu:old question 2a:old answer 2u:new question"
    assert decoded(fit_prompt(messages, FakeCodec(), 40)) == "s:be briefu:new question"


def test_a_last_message_too_long_loses_its_middle() -> None:
    question = "INSTRUCTIONS " + "context " * 100 + " QUESTION?"
    messages = [ChatMessage("system", "sys"), ChatMessage("user", question)]
    kept = decoded(fit_prompt(messages, FakeCodec(), 200))
    assert len(kept) <= 200
    assert kept.startswith("s:sysu:INSTRUCTIONS") and kept.endswith("QUESTION?") and "…" in kept


def test_a_prompt_that_cannot_fit_raises_a_config_error() -> None:
    messages = [ChatMessage("system", "s" * 300), ChatMessage("user", "question")]
    with pytest.raises(ConfigError, match="context_window"):
        fit_prompt(messages, FakeCodec(), 100)


# ---------------------------------------------------------------- chatting with a converted ChatGLM2

def test_backend_implements_the_llm_protocol_with_the_model_limits(llm: TransformersLLM) -> None:
    assert isinstance(llm, LLM)
    assert llm.name == "chatglm2-6b"
    assert llm.context_window == 256  # the checkpoint's seq_length
    assert llm.count_tokens("知识库 hello") == len(llm.codec.encode_text("知识库 hello")) > 3


def test_greedy_reply_has_the_reference_tokens_over_20_steps(llm: TransformersLLM, glm2: tuple) -> None:
    src, config, state = glm2
    prompt = llm.prompt_ids(QUESTION, 20)
    assert prompt[:2] == llm.codec.tokenizer.prefix_ids
    expected = ChatGLM2Reference(state, config).greedy(prompt, 20, stop=llm.stop_token_ids)
    reply = llm.generate(QUESTION, GenerationParams(max_tokens=20, repetition_penalty=1.0))
    assert reply == llm.codec.visible_reply(llm.codec.decode(expected), True)
    assert llm.last_usage.completion_tokens == len(expected) == 20
    generated = llm.model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):]
    assert generated.tolist() == expected


def test_streamed_pieces_join_to_the_whole_reply(llm: TransformersLLM) -> None:
    params = GenerationParams(max_tokens=20, repetition_penalty=1.0)
    pieces = list(llm.stream(QUESTION, params))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate(QUESTION, params)
    assert llm.last_usage.first_token_seconds is not None


def test_a_stop_string_cuts_the_reply_and_ends_generation(llm: TransformersLLM) -> None:
    full = llm.generate(QUESTION, GenerationParams(max_tokens=20, repetition_penalty=1.0))
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = llm.generate(QUESTION, GenerationParams(max_tokens=20, repetition_penalty=1.0, stop=(stop,)))
    assert cut == full[:full.index(stop)]
    assert llm.last_usage.completion_tokens < 20


def test_a_stop_string_before_a_character_still_arriving_ends_generation_at_once(
        llm: TransformersLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # A byte-level tokenizer's token can end a stop string and begin the next character ("…world" + its first
    # byte): the text then ends in U+FFFD. Read only once whole, the stop waited for the model's next whole
    # character, here never (random weights wrote 60 more tokens so), and the reply ended as "length".
    def fake_decode(ids: Sequence[int]) -> str:
        if len(ids) < 3:
            return ["", "Hel\ufffd", "Hello wor\ufffd"][len(ids)]
        return "Hello world" + "\ufffd" * (len(ids) - 2)

    def fake_generate(prompt: list[int], params: GenerationParams, tokens: object, cancel: object,
                      errors: list[BaseException]) -> None:
        for n in range(params.max_tokens):
            tokens.queue.put([100 + n])  # type: ignore[attr-defined]  # (not a stop token)
        tokens.end()  # type: ignore[attr-defined]

    monkeypatch.setattr(llm.codec, "decode", fake_decode)
    monkeypatch.setattr(llm, "_generate", fake_generate)
    reply = llm.generate(QUESTION, GenerationParams(max_tokens=40, repetition_penalty=1.0, stop=("world",)))
    assert reply == "Hello "
    assert (llm.last_usage.finish_reason, llm.last_usage.completion_tokens) == ("stop", 3)


def test_a_stop_token_ends_the_reply(llm: TransformersLLM, glm2: tuple) -> None:
    src, config, state = glm2
    prompt = llm.prompt_ids(QUESTION, 20)
    expected = ChatGLM2Reference(state, config).greedy(prompt, 20)
    saved = llm.stop_token_ids
    llm.stop_token_ids = (expected[4],)
    try:
        reply = llm.generate(QUESTION, GenerationParams(max_tokens=20, repetition_penalty=1.0))
    finally:
        llm.stop_token_ids = saved
    assert llm.last_usage.completion_tokens == expected.index(expected[4]) + 1
    assert reply == llm.codec.visible_reply(llm.codec.decode(expected[:expected.index(expected[4])]), True)


def test_leaving_a_stream_early_frees_the_model_for_the_next_reply(llm: TransformersLLM) -> None:
    stream = llm.stream(QUESTION, GenerationParams(max_tokens=200, repetition_penalty=1.0))
    next(stream)
    stream.close()
    assert llm.generate(QUESTION, GenerationParams(max_tokens=5))


def test_the_repetition_penalty_weighs_the_last_64_tokens_not_the_whole_prompt() -> None:
    # As llama.cpp applies it: a passage's words far back in the prompt are not repeats for the answer to avoid.
    processor = generation_kwargs(GenerationParams(repetition_penalty=2.0), (), 0)["logits_processor"]
    ids = torch.tensor([[0] + [3] * 63 + [1]])  # token 0 only before the last 64; 1 and 3 among them; 2 absent
    scores = processor(ids, torch.tensor([[2.0, -2.0, 2.0, 2.0]]))
    assert scores.tolist() == [[2.0, -4.0, 2.0, 1.0]]
    assert "logits_processor" not in generation_kwargs(GenerationParams(repetition_penalty=1.0), (), 0)


def test_sampling_with_a_seed_is_reproducible(llm: TransformersLLM) -> None:
    params = GenerationParams(max_tokens=10, temperature=1.0, top_p=0.95, seed=3)
    assert llm.generate(QUESTION, params) == llm.generate(QUESTION, params)


def test_long_history_is_trimmed_to_the_context_window(llm: TransformersLLM) -> None:
    turns = [ChatMessage("user" if i % 2 == 0 else "assistant", f"第{i}轮 some history text")
             for i in range(40)]
    messages = [ChatMessage("system", "System rule."), *turns, ChatMessage("user", "最后的问题？")]
    prompt = llm.prompt_ids(messages, 20)
    assert len(prompt) <= llm.context_window - 20
    text = llm.codec.decode(prompt)
    assert text.startswith("System rule.") and text.endswith("问：最后的问题？\n\n答：")
    assert "第39轮" in text and "第0轮" not in text
    assert llm.generate(messages, GenerationParams(max_tokens=20))  # fits: generation runs


def test_chatglm3_checkpoint_chats_in_its_role_format(tmp_path: Path, sp_model: Path) -> None:
    config, state = write_checkpoint(tmp_path / "chatglm3-6b", sp_model, version="chatglm3",
                                     fmt="safetensors")
    settings = llm_settings(tmp_path / "chatglm3-6b")
    llm = build_transformers_llm(settings, tmp_path / "cache")
    tok = llm.codec.tokenizer
    prompt = llm.prompt_ids(QUESTION, 20)
    assert prompt[2] == tok.token_id("<|system|>") and prompt[-1] == tok.token_id("<|assistant|>")
    expected = ChatGLM2Reference(state, config).greedy(prompt, 20, stop=llm.stop_token_ids)
    expected_text = llm.codec.visible_reply(tok.decode(expected), True)
    assert llm.generate(QUESTION, greedy_params(settings)) == expected_text
    assert set(llm.stop_token_ids) == {2, tok.token_id("<|user|>"), tok.token_id("<|observation|>")}


# ---------------------------------------------------------------- resolution and the conversion cache

def test_checkpoint_is_converted_once_and_then_reused(tmp_path: Path, glm2: tuple,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    progress: list[tuple[int, int]] = []
    first = prepare_model(str(glm2[0]), tmp_path, lambda done, total: progress.append((done, total)))
    assert chatglm.is_converted_chatglm(first) and first.parent == tmp_path / "models"
    assert progress and progress[-1][0] == progress[-1][1]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(chatglm, "convert_chatglm", fail)
    assert prepare_model(str(glm2[0]), tmp_path) == first


def test_a_changed_checkpoint_gets_a_new_conversion_replacing_the_old_one(tmp_path: Path, sp_model: Path) -> None:
    write_checkpoint(tmp_path / "src", sp_model, seed=1)
    write_checkpoint(tmp_path / "other" / "src", sp_model, seed=1)  # same folder name, another checkpoint
    first = prepare_model(str(tmp_path / "src"), tmp_path / "cache")
    other = prepare_model(str(tmp_path / "other" / "src"), tmp_path / "cache")
    write_checkpoint(tmp_path / "src", sp_model, seed=2)
    second = prepare_model(str(tmp_path / "src"), tmp_path / "cache")
    assert first != second and chatglm.is_converted_chatglm(second)
    assert not first.exists()  # as big as the checkpoint, and never used again
    assert chatglm.is_converted_chatglm(other)


def test_settings_this_machine_cannot_honour_are_refused_before_converting(tmp_path: Path, glm2: tuple) -> None:
    with pytest.raises(ConfigError, match="fp16"):
        build_transformers_llm(llm_settings(glm2[0], device="cpu", dtype="fp16"), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_context_window_capped_by_the_model_is_named_in_the_error(llm: TransformersLLM) -> None:
    asked_for_more = TransformersLLM(llm.model, llm.codec, name="chatglm2", context_window=8192)
    assert asked_for_more.context_window == 256
    with pytest.raises(ConfigError, match=r"llm.context_window \(8192, capped at the model's 256 positions\)"):
        asked_for_more.prompt_ids(QUESTION, 250)


def test_a_file_saved_again_with_the_same_size_changes_the_key(tmp_path: Path) -> None:
    shard = tmp_path / "pytorch_model-00001-of-00002.bin"
    data = bytearray(3 << 20)  # the middle MiB is in neither end the key reads
    shard.write_bytes(data)
    os.utime(shard, ns=(1_700_000_000_000_000_000,) * 2)
    before = model_cache.fingerprint([shard])
    data[len(data) // 2] = 1
    shard.write_bytes(data)
    os.utime(shard, ns=(1_700_000_001_000_000_000,) * 2)
    assert model_cache.fingerprint([shard]) != before


def test_a_half_written_conversion_is_never_used(tmp_path: Path, glm2: tuple) -> None:
    target = prepare_model(str(glm2[0]), tmp_path)
    os.rename(target, tmp_path / "done")
    target.mkdir()  # an interrupted conversion: the folder exists without its marker
    (target / "config.json").write_text("{}")
    partial = target.parent / f".{target.name}.partial-999999999-abcd"
    partial.mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        prepare_model(str(glm2[0]), tmp_path)
    (target / "config.json").unlink()
    assert prepare_model(str(glm2[0]), tmp_path) == target
    assert chatglm.is_converted_chatglm(target) and not partial.exists()


def test_a_gguf_conversion_removes_the_partial_folders_of_dead_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny = write_tiny_causal_lm(tmp_path / "tiny")
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")  # transformers' GGUF reader is replaced by the tiny model's loaders
    monkeypatch.setattr(model_cache, "AutoModelForCausalLM", SimpleNamespace(
        from_pretrained=lambda folder, gguf_file, **kw: AutoModelForCausalLM.from_pretrained(tiny, **kw)))
    monkeypatch.setattr(model_cache, "AutoTokenizer", SimpleNamespace(
        from_pretrained=lambda folder, gguf_file: AutoTokenizer.from_pretrained(tiny)))
    target = tmp_path / "cache" / "models" / f"tiny-hf-{model_cache.fingerprint([gguf])[:16]}"
    dead = target.parent / f".{target.name}.partial-999999999-abcd"
    alive = target.parent / f".{target.name}.partial-{os.getpid()}-abcd"
    dead.mkdir(parents=True)
    alive.mkdir()
    assert prepare_model(str(gguf), tmp_path / "cache") == target
    assert (target / "config.json").is_file() and not dead.exists() and alive.exists()


def test_a_converted_folder_is_used_as_is(tmp_path: Path, glm2: tuple) -> None:
    folder = chatglm.convert_chatglm(glm2[0], tmp_path / "mine")
    assert prepare_model(str(folder), tmp_path / "cache") == folder
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("embedded:nope", ConfigError, "no such embedded model"),
    ("/no/such/folder", ModelUnavailable, "neither an existing path nor a hub id"),
])
def test_models_that_cannot_be_found_are_reported(tmp_path: Path, spec: str, error: type,
                                                   message: str) -> None:
    with pytest.raises(error, match=message):
        prepare_model(spec, tmp_path)


def test_a_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="no config.json"):
        prepare_model(str(tmp_path / "empty"), tmp_path / "cache")


# ---------------------------------------------------------------- any causal-LM folder

def test_a_causal_lm_folder_chats_with_its_chat_template(tmp_path: Path) -> None:
    folder = write_tiny_causal_lm(tmp_path / "tiny-llama")
    llm = build_transformers_llm(llm_settings(folder, context_window=4096), tmp_path / "cache")
    assert llm.context_window == 128 and llm.name == "tiny-llama"
    prompt = llm.codec.tokenizer.decode(llm.prompt_ids(QUESTION, 20))
    assert prompt == ("<|im_start|>system\nYou answer from the context.<|im_end|>\n"
                      "<|im_start|>user\nWhat is 知识库？<|im_end|>\n<|im_start|>assistant\n")
    pieces = list(llm.stream(QUESTION, GenerationParams(max_tokens=12, repetition_penalty=1.0)))
    assert "".join(pieces) == llm.generate(QUESTION, GenerationParams(max_tokens=12, repetition_penalty=1.0))
    assert llm.codec.tokenizer.eos_token_id in llm.stop_token_ids


def test_a_checkpoint_that_cannot_be_converted_names_llm_model(glm2: tuple, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "chatglm2-6b"
    shutil.copytree(glm2[0], src)
    (src / "tokenizer.model").unlink()
    with pytest.raises(ModelUnavailable,
                       match=rf"tokenizer\.model.* \(from llm\.model = '{src}': change llm.model or KBQA_LLM__MODEL\)"):
        build_transformers_llm(llm_settings(src), tmp_path / "cache")


def test_a_truncated_shard_is_named_by_the_converter_not_a_safetensors_traceback(sp_model: Path, tmp_path: Path
                                                                                 ) -> None:
    src = tmp_path / "chatglm2-6b"
    write_checkpoint(src, sp_model, fmt="safetensors")
    shard = src / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:4])  # a download cut short: not even a header
    with pytest.raises(ModelUnavailable, match="is the file complete"):
        build_transformers_llm(llm_settings(src), tmp_path / "cache")


def test_a_folder_whose_weights_do_not_fit_its_config_is_one_clear_error(tmp_path: Path) -> None:
    import json

    folder = write_tiny_causal_lm(tmp_path / "tiny-llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    refusal = r"Cannot load .*tiny-llama \(llm\.model, KBQA_LLM__MODEL\) .*do not have the shapes its config"
    with pytest.raises(ModelUnavailable, match=refusal) as refused:
        build_transformers_llm(llm_settings(folder), tmp_path / "cache")
    assert "\n" not in str(refused.value)


def test_a_folder_without_chat_template_gets_a_plain_role_format(tmp_path: Path) -> None:
    folder = write_tiny_causal_lm(tmp_path / "plain", chat_template=None)
    llm = build_transformers_llm(llm_settings(folder), tmp_path / "cache")
    prompt = llm.codec.tokenizer.decode(llm.prompt_ids(QUESTION, 20))
    assert prompt.startswith("System: You answer") and prompt.endswith("Assistant:")


def test_a_lora_folder_for_a_causal_lm_is_merged_into_it(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = write_tiny_causal_lm(tmp_path / "tiny-llama")
    torch.manual_seed(0)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tuned.save_pretrained(tmp_path / "lora")
    llm = build_transformers_llm(llm_settings(folder, adapter=str(tmp_path / "lora")), tmp_path / "cache")
    ids = torch.tensor([llm.prompt_ids(QUESTION, 20)])
    with torch.no_grad():
        expected, got = tuned.eval()(input_ids=ids).logits, llm.model(ids).logits
    assert type(llm.model).__name__ == "LlamaForCausalLM"
    assert float((expected - got).abs().max()) < 1e-5


# ---------------------------------------------------------------- through the service

def test_service_answers_with_a_converted_chatglm_checkpoint(tmp_path: Path, sp_model: Path) -> None:
    from kbqa.bootstrap import build_service
    from kbqa.settings import load_settings
    from tests.fakes import FakeEmbedder

    write_checkpoint(tmp_path / "chatglm2-6b", sp_model, seq_length=2048)
    root = Path(__file__).resolve().parents[1]
    settings = load_settings(
        paths={"knowledge_root": tmp_path / "kb", "cache_dir": tmp_path / "cache",
               "prompts_dir": root / "prompts"},
        llm=llm_settings(tmp_path / "chatglm2-6b", context_window=1024, max_tokens=8).model_dump(),
        retrieval={"top_k": 2, "score_threshold": 0.1}, ingest={"ocr": False})
    service = build_service(settings, embedder=FakeEmbedder())
    (tmp_path / "rivers.txt").write_text("长江是亚洲最长的河流。\n\nThe Nile flows north.", encoding="utf-8")
    service.add_files("kb", [tmp_path / "rivers.txt"])
    events = list(service.ask_stream("kb", "亚洲最长的河流是哪条？"))
    assert events[0].kind == "sources" and events[-1].kind == "done"
    answer = events[-1].answer
    assert answer is not None and answer.sources[0].source == "rivers.txt"
    assert answer.answer == "".join(e.text for e in events if e.kind == "token")
    assert any(p.name.startswith("chatglm2-6b-glm-") for p in (tmp_path / "cache" / "models").iterdir())


@pytest.mark.real
def test_embedded_gguf_is_converted_once_and_answers(tmp_path: Path) -> None:
    settings = llm_settings("embedded:smollm2-135m-instruct", context_window=2048, max_tokens=16)
    llm = build_transformers_llm(settings, tmp_path)
    assert llm.name == "smollm2-135m-instruct"
    question = [ChatMessage("user", "What is the capital of France?")]
    reply = llm.generate(question, GenerationParams(max_tokens=16))
    assert "Paris" in reply
    converted = list((tmp_path / "models").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    assert prepare_model(settings.model, tmp_path) == converted[0]


def test_a_damaged_cached_conversion_is_converted_again(glm2: tuple, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    hello, params = [ChatMessage(role="user", content="你好 hello")], greedy_params(llm_settings(glm2[0]), max_tokens=5)
    first = build_transformers_llm(llm_settings(glm2[0]), cache)
    expected = first.generate(hello, params)
    (converted,) = (cache / "models").iterdir()
    shard = next(converted.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut short (disk trouble, a copy)
    with caplog.at_level("WARNING"):
        again = build_transformers_llm(llm_settings(glm2[0]), cache)
    assert again.generate(hello, params) == expected
    assert f"{converted} is damaged" in caplog.text
    assert [p.name for p in (cache / "models").iterdir()] == [converted.name]


def test_a_damaged_model_folder_of_the_users_is_named_not_touched(tmp_path: Path) -> None:
    folder = write_tiny_causal_lm(tmp_path / "tiny")
    shard = next(folder.glob("*.safetensors"))
    cut = shard.read_bytes()[:100]
    shard.write_bytes(cut)
    with pytest.raises(ModelUnavailable, match=rf"Cannot read {shard} .*damaged or was cut short.*llm.model"):
        build_transformers_llm(llm_settings(folder), tmp_path / "cache")
    assert shard.read_bytes() == cut


def test_a_damaged_pytorch_bin_is_one_error_naming_the_setting(tmp_path: Path) -> None:
    import os

    folder = write_tiny_causal_lm(tmp_path / "tiny")
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    (folder / "pytorch_model.bin").write_bytes(os.urandom(4096))
    damaged = r"Cannot load .*\(llm.model, KBQA_LLM__MODEL\).*: a weights file is damaged"
    with pytest.raises(ModelUnavailable, match=damaged):
        build_transformers_llm(llm_settings(folder), tmp_path / "cache")


def test_a_whole_cached_conversion_that_cannot_load_here_is_kept(glm2: tuple, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from kbqa.llm import transformers_backend

    cache = tmp_path / "cache"
    build_transformers_llm(llm_settings(glm2[0]), cache)
    (converted,) = (cache / "models").iterdir()
    made = converted.stat().st_mtime_ns

    def too_big(folder: Path, placement: Placement) -> None:
        raise ModelUnavailable(f"Cannot load {folder} (llm.model): some modules are dispatched on the CPU")

    monkeypatch.setattr(transformers_backend, "load_model", too_big)
    with pytest.raises(ModelUnavailable, match="dispatched on the CPU"):
        build_transformers_llm(llm_settings(glm2[0]), cache)
    assert [p.name for p in (cache / "models").iterdir()] == [converted.name]
    assert converted.stat().st_mtime_ns == made  # not converted again: minutes and gigabytes for a 6B model


def test_a_stream_whose_client_left_while_it_waited_for_the_model_generates_nothing(
        llm: TransformersLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API sets ABANDONED for a request whose client may leave while it is queued behind another answer.
    called: list[str] = []
    monkeypatch.setattr(llm.model, "generate", lambda **kwargs: called.append("generate"))
    gone = threading.Event()
    token = ABANDONED.set(gone)
    context = contextvars.copy_context()  # as anyio's worker threads get it
    ABANDONED.reset(token)
    reader = threading.Thread(target=context.run, args=(
        lambda: called.extend(llm.stream(QUESTION, GenerationParams(max_tokens=5))),))
    with llm._lock:  # the model is busy with another request
        reader.start()
        time.sleep(0.3)
        gone.set()  # its client left
    reader.join(10)
    assert not reader.is_alive() and called == []
