"""The OpenAI-compatible API through the official ``openai`` client, against a live local server (fake models)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from kbqa.bootstrap import build_service
from kbqa.errors import ContextLengthExceeded
from kbqa.service import KBQAService
from kbqa.settings import load_settings
from kbqa.ui.app import build_server
from tests.fakes import FakeEmbedder, FakeLLM
from tests.live_server import live_server
from tests.test_service import make_settings


@pytest.fixture(scope="module")
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLM) -> KBQAService:
    tmp = tmp_path_factory.mktemp("api")
    service = build_service(make_settings(tmp), embedder=FakeEmbedder(), llm=lambda: llm)
    doc = tmp / "rivers.txt"
    doc.write_text("The Yangtze is the longest river in Asia.\n\nThe Nile flows north.", encoding="utf-8")
    service.add_files("rivers", [doc])
    return service


@pytest.fixture(scope="module")
def base_url(service: KBQAService) -> Iterator[str]:
    with live_server(build_server(service, load_settings())) as url:
        yield url


@pytest.fixture
def client(base_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="local", max_retries=0)


def test_models_list_the_chat_model_and_each_knowledge_base(client) -> None:  # type: ignore[no-untyped-def]
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "kbqa" and "kb:rivers" in ids
    assert "kbqa-embedding" in ids and client.models.retrieve("kbqa-embedding").id == "kbqa-embedding"


def test_chat_with_the_embedding_model_says_which_to_use(client) -> None:  # type: ignore[no-untyped-def]
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="kbqa-embedding", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["param"] == "model" and "/v1/embeddings" in info.value.body["message"]


def test_plain_chat_completion_reaches_the_local_model(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["Hello there."]
    out = client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)
    assert out.choices[0].message.content == "Hello there."
    assert llm.prompts[-1][-1].content == "Hi"


def test_streamed_chat_arrives_in_pieces(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["one two three"]
    stream = client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": "count"}],
                                            stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 3 and "".join(pieces) == "one two three"


def test_knowledge_base_model_answers_with_sources(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["The Yangtze [1]."]
    out = client.chat.completions.create(model="kb:rivers",
                                         messages=[{"role": "user", "content": "Longest river in Asia?"}])
    assert out.choices[0].message.content == "The Yangtze [1]."
    sources = out.model_extra["sources"]
    assert sources[0]["source"] == "rivers.txt" and "Yangtze" in sources[0]["text"]


def test_streamed_knowledge_base_answer_ends_with_sources(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["The Nile [1]."]
    chunks = list(client.chat.completions.create(model="kb:rivers", stream=True,
                                                 messages=[{"role": "user", "content": "Which river flows north?"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The Nile [1]."
    assert chunks[-1].model_extra["sources"][0]["source"] == "rivers.txt"


@pytest.mark.parametrize("stream", [False, True])
def test_a_question_too_long_for_the_model_is_an_error_status_streamed_or_not(
        base_url: str, llm: FakeLLM, stream: bool) -> None:
    llm.error = ContextLengthExceeded("The prompt does not fit the model's context; send less text.")
    try:
        body = {"model": "kb:rivers", "stream": stream,
                "messages": [{"role": "user", "content": "Which river flows north? " * 50}]}
        out = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    finally:
        llm.error = None
    assert out.status_code == 400, out.text  # before any chunk, not a stream that breaks off
    assert "does not fit" in out.json()["error"]["message"]
    assert out.json()["error"]["code"] == "context_length_exceeded"  # OpenAI's code, which apps test for


def test_knowledge_base_model_reads_the_last_user_message_as_a_follow_up(  # type: ignore[no-untyped-def]
        client, llm: FakeLLM) -> None:
    llm.replies = ["Which way does the Nile flow?", "North [1]."]
    out = client.chat.completions.create(model="kb:rivers", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which river is in Egypt?"}, {"role": "assistant", "content": "The Nile."},
        {"role": "user", "content": "Which way does it flow?"}])
    assert out.choices[0].message.content == "North [1]."
    rewrite = llm.prompts[-2][-1].content
    assert "Which river is in Egypt?" in rewrite and "Follow-up question: Which way does it flow?" in rewrite
    assert "Be brief." not in rewrite
    assert "Question: Which way does the Nile flow?" in llm.prompts[-1][-1].content


def test_knowledge_base_model_needs_a_user_message(client) -> None:  # type: ignore[no-untyped-def]
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="user"):
        client.chat.completions.create(model="kb:rivers", messages=[{"role": "system", "content": "hi"}])


def test_unknown_knowledge_base_is_a_404_with_a_message(client) -> None:  # type: ignore[no-untyped-def]
    from openai import NotFoundError

    with pytest.raises(NotFoundError, match="No knowledge base named"):
        client.chat.completions.create(model="kb:nope", messages=[{"role": "user", "content": "q"}])


def test_embeddings_have_the_model_dimension(client) -> None:  # type: ignore[no-untyped-def]
    out = client.embeddings.create(model="kbqa-embedding", input=["a", "b"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 256


def test_files_can_be_uploaded_listed_searched_and_deleted(base_url: str, tmp_path: Path) -> None:
    files = [("files", ("planets.md", b"Mars is the red planet.", "text/markdown")),
             ("files", ("../../etc/passwd", b"root:x:0:0", "text/plain"))]
    report = httpx.post(f"{base_url}/kb/space/files", files=files, timeout=30).json()
    assert [f["status"] for f in report["files"]] == ["added", "failed"]
    # Named as kbqa reads an upload's name: its base name, never a path (the README's "What happens to a file").
    assert report["files"][1]["name"] == "passwd" and report["files"][1]["reason"].startswith("passwd: ")
    assert [d["name"] for d in httpx.get(f"{base_url}/kb/space/files").json()] == ["planets.md"]
    hits = httpx.post(f"{base_url}/kb/space/search", json={"query": "red planet", "k": 2}).json()
    assert hits[0]["source"] == "planets.md" and hits[0]["rank"] == 1
    assert httpx.delete(f"{base_url}/kb/space/files/planets.md").status_code == 200
    assert httpx.delete(f"{base_url}/kb/space/files/planets.md").status_code == 404
    assert httpx.delete(f"{base_url}/kb/space").status_code == 200


def test_web_app_is_served_at_the_root(base_url: str) -> None:
    page = httpx.get(base_url + "/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_upload_over_the_size_limit_is_refused_without_being_copied(service: KBQAService) -> None:
    from fastapi.testclient import TestClient

    from kbqa.api import build_api

    client = TestClient(build_api(service, max_file_mb=0.001))  # about 1 kB
    big = ("files", ("../../big.txt", b"x" * 5000, "text/plain"))
    refused = client.post("/kb/rivers/files", files=[big])
    assert refused.status_code == 413 and "ingest.max_file_mb" in refused.json()["error"]["message"]
    mixed = client.post("/kb/rivers/files", files=[big, ("files", ("ok.txt", b"The Nile is long.", "text/plain"))])
    assert [f["status"] for f in mixed.json()["files"]] == ["failed", "added"]
    assert "over the" in mixed.json()["files"][0]["reason"]
    assert mixed.json()["files"][0]["name"] == "big.txt"  # named as it would be stored, not as sent
    client.delete("/kb/rivers/files/ok.txt")


def test_settings_the_machine_cannot_honour_are_the_servers_error_not_the_clients(tmp_path: Path) -> None:
    # A 4xx tells a client to fix its request; llm.dtype = 'fp16' on a CPU is for whoever runs the server.
    from fastapi.testclient import TestClient

    from kbqa.api import build_api
    from kbqa.errors import ConfigError

    def cannot_load() -> FakeLLM:
        raise ConfigError("llm.dtype = 'fp16' is not usable on a CPU. Set llm.dtype = 'bf16' or 'fp32'.")

    client = TestClient(build_api(build_service(make_settings(tmp_path), embedder=FakeEmbedder(), llm=cannot_load)))
    out = client.post("/v1/chat/completions", json={"model": "kbqa", "messages": [{"role": "user", "content": "Hi"}]})
    assert out.status_code == 503 and out.json()["error"]["type"] == "server_error"
    assert out.json()["error"]["code"] == "config_error" and "llm.dtype" in out.json()["error"]["message"]
    assert out.headers["x-should-retry"] == "false"  # OpenAI clients would send it twice more, to no avail


def test_a_max_tokens_that_leaves_no_room_for_the_prompt_is_the_clients_error(tmp_path: Path) -> None:
    from kbqa.errors import ContextLengthExceeded
    from kbqa.llm.transformers_backend import TransformersLLM

    llm = TransformersLLM.__new__(TransformersLLM)  # only the context arithmetic is used
    llm.context_window, llm._window = 64, "the model's 64-token context"
    with pytest.raises(ContextLengthExceeded) as refused:
        llm.prompt_ids([], 60)
    assert refused.value.status_code == 400


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "kbqa"}),
    ("/v1/chat/completions", {"model": "kbqa", "messages": [{"role": "robot", "content": "x"}]}),
    ("/v1/chat/completions", {"model": "kbqa", "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 3_000_000_000}),
    ("/kb/rivers/search", {"query": "", "k": 3}),
    ("/kb/rivers/search", {"query": "  \n ", "k": 3}),
    ("/kb/rivers/search", {"query": "Nile", "k": 0}),
])
def test_invalid_requests_get_the_error_format(base_url: str, path: str, body: dict) -> None:  # type: ignore[type-arg]
    out = httpx.post(base_url + path, json=body, timeout=30)
    assert out.status_code == 400  # as OpenAI answers a bad value, not FastAPI's 422
    error = out.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["code"] == "invalid_value"
    assert error["param"]


@pytest.mark.parametrize(("param", "value"), [("temperature", 5), ("top_p", 2), ("max_tokens", 0), ("n", 0)])
def test_a_value_out_of_range_is_a_bad_request_to_an_openai_client(client, param: str, value: int) -> None:  # type: ignore[no-untyped-def]
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": "hi"}], **{param: value})
    assert info.value.body["param"] == param


def test_nulls_openai_accepts_are_accepted_and_a_question_without_content_is_not(  # type: ignore[no-untyped-def]
        base_url: str, llm: FakeLLM) -> None:
    # Clients that write unset fields as null send "stream": null; OpenAI takes it as false.
    hi = [{"role": "user", "content": "Hi"}]
    llm.replies = ["Hello."]
    out = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "kbqa", "messages": hi, "stream": None},
                     timeout=30)
    assert out.status_code == 200 and out.json()["choices"][0]["message"]["content"] == "Hello."
    vectors = httpx.post(f"{base_url}/v1/embeddings", json={"input": "Nile", "encoding_format": None}, timeout=30)
    assert vectors.status_code == 200 and isinstance(vectors.json()["data"][0]["embedding"], list)
    asked = len(llm.prompts)
    empty = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                       json={"model": "kbqa", "messages": [{"role": "user", "content": None}]})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages.0"
    assert "needs content" in empty.json()["error"]["message"] and len(llm.prompts) == asked
    for model, messages, says in [("kbqa", [], "messages is empty"),
                                  ("kb:rivers", [{"role": "system", "content": "Be brief."}], "no user message"),
                                  ("kb:rivers", [{"role": "user", "content": "  "}], "last user message is empty")]:
        refused = httpx.post(f"{base_url}/v1/chat/completions", json={"model": model, "messages": messages},
                             timeout=30)
        error = refused.json()["error"]
        assert refused.status_code == 400 and (error["code"], error["param"]) == ("invalid_value", "messages")
        assert says in error["message"]
    called_tools = [*hi, {"role": "assistant", "content": None, "tool_calls": []}, {"role": "user", "content": "Hi"}]
    llm.replies = ["Hello again."]
    again = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "kbqa", "messages": called_tools}, timeout=30)
    assert again.status_code == 200


def test_a_body_in_another_encoding_than_utf8_is_an_openai_error(base_url: str) -> None:
    body = '{"model": "kbqa", "messages": [{"role": "user", "content": "你好"}]}'.encode("gbk")
    for path in ("/v1/chat/completions", "/v1/embeddings", "/kb/rivers/search"):
        out = httpx.post(base_url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert out.status_code == 400, path
        assert out.json()["error"]["code"] == "invalid_json" and "UTF-8" in out.json()["error"]["message"], path


def test_usage_and_finish_reason_say_what_the_reply_cost(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["one two three four five six"]
    cut = client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": "count"}], max_tokens=3)
    assert cut.choices[0].message.content == "one two three " and cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3 and cut.usage.total_tokens == cut.usage.prompt_tokens + 3
    llm.replies = ["one two"]
    chunks = list(client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": "count"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1]) and all("usage" in c.model_fields_set for c in chunks)


def test_knowledge_base_answers_take_the_client_generation_settings(  # type: ignore[no-untyped-def]
        client, llm: FakeLLM) -> None:
    llm.replies = ["The Yangtze is in Asia [1]. STOP More."]
    out = client.chat.completions.create(model="kb:rivers", max_tokens=40, temperature=0.5, top_p=0.5, stop=["STOP"],
                                         messages=[{"role": "user", "content": "Longest river in Asia?"}])
    assert out.choices[0].message.content == "The Yangtze is in Asia [1]."
    params = llm.params[-1]
    assert (params.max_tokens, params.temperature, params.top_p, params.stop) == (40, 0.5, 0.5, ("STOP",))
    assert not params.reuse_prompt_cache  # answers from a knowledge base stay reproducible
    llm.replies = ["The Yangtze is the longest river in Asia."]
    out = client.chat.completions.create(model="kb:rivers", max_tokens=2,
                                         messages=[{"role": "user", "content": "Longest river in Asia?"}])
    assert out.choices[0].message.content == "The Yangtze" and out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_answer_from_a_knowledge_base_is_a_reply_not_a_server_error(  # type: ignore[no-untyped-def]
        client, llm: FakeLLM, stream: bool) -> None:
    # A stop string at the start of the reply (or a model that ends at once) writes nothing.
    llm.replies = ["The Yangtze [1]."]
    ask = {"model": "kb:rivers", "stop": ["The"], "messages": [{"role": "user", "content": "Longest river in Asia?"}]}
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **ask))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        out = client.chat.completions.create(**ask)
        assert out.choices[0].message.content == "" and out.choices[0].finish_reason == "stop"
        assert out.model_extra["sources"]  # the passages it was given are still shown
        assert "The model wrote no answer" in out.model_extra["notice"]


def test_empty_stop_strings_are_ignored(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    # Some clients send "" for "no stop string"; it would match at once and empty every reply.
    for stop in ("", [""], ["", "STOP"]):
        llm.replies = ["Hello there. STOP More."]
        out = client.chat.completions.create(model="kbqa", stop=stop, messages=[{"role": "user", "content": "Hi"}])
        assert out.choices[0].message.content == ("Hello there. " if "STOP" in stop else "Hello there. STOP More.")
        assert llm.params[-1].stop == (("STOP",) if "STOP" in stop else ())  # llama.cpp would match "" at once


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                   {"role": "user", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "kb:rivers", "messages": [{"role": "user", "content": " "}]}, "messages"),
])
def test_parameters_kbqa_cannot_honour_are_refused_not_ignored(base_url: str, extra: dict, param: str) -> None:  # type: ignore[type-arg]
    body = {"model": "kbqa", "messages": [{"role": "user", "content": "hi"}], **extra}
    out = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert out.status_code == 400
    assert out.json()["error"]["param"] == param and out.json()["error"]["type"] == "invalid_request_error"


def test_defaults_of_parameters_kbqa_does_not_apply_are_accepted(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["Fine."]
    out = client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": [
        {"type": "text", "text": "How are you?"}]}], presence_penalty=0, frequency_penalty=0, logit_bias={},
        tool_choice="none", parallel_tool_calls=False, top_logprobs=0, modalities=["text"],
        # hints for a hosted service, and keys of other servers: no effect here, as README says
        user="u1", metadata={"app": "x"}, store=False, reasoning_effort="low", extra_body={"top_k": 5})
    assert out.choices[0].message.content == "Fine."


def test_error_codes_are_snake_case_of_the_error_names() -> None:
    from kbqa.errors import KBQAError, KnowledgeBaseNotFound
    from kbqa.openai_format import error_code

    assert error_code(KBQAError("x")) == "kbqa_error"
    assert error_code(KnowledgeBaseNotFound("x")) == "knowledge_base_not_found"


def test_unknown_models_are_404_like_openai(client) -> None:  # type: ignore[no-untyped-def]
    from openai import NotFoundError

    for stream in (False, True):
        with pytest.raises(NotFoundError) as info:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
        assert "GET /v1/models" in info.value.body["message"]


def test_knowledge_base_answers_say_whether_they_are_refusals(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["The Nile flows north [1]."]
    question = [{"role": "user", "content": "Where does the Nile flow?"}]
    out = client.chat.completions.create(model="kb:rivers", messages=question)
    assert out.model_extra["refused"] is False and out.model_extra["query"] == "Where does the Nile flow?"
    refusal = client.chat.completions.create(model="kb:rivers", stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "量子计算机的工作温度是多少？"}])
    chunks = list(refusal)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.model_extra["refused"] is True and final.model_extra["sources"] == []
    assert final.model_extra["notice"] and chunks[-1].usage is not None


def test_developer_messages_are_system_messages(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["Bonjour."]
    client.chat.completions.create(model="kbqa", messages=[
        {"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "Non."}]}, {"role": "user", "content": "Bis"}])
    assert [(m.role, m.content) for m in llm.prompts[-1]] == [
        ("system", "Answer in French."), ("user", "Hi"), ("assistant", ""), ("user", "Again"), ("assistant", "Non."),
        ("user", "Bis")]


def test_errors_have_openai_shape_everywhere_under_the_api(base_url: str, client) -> None:  # type: ignore[no-untyped-def]
    missing = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                         json={"model": "kb:nope", "messages": [{"role": "user", "content": "q"}]}).json()["error"]
    assert missing["type"] == "invalid_request_error" and missing["code"] == "knowledge_base_not_found"
    assert missing["param"] == "model"  # where the client named it
    for method, path in [("POST", "/v1/completions"), ("GET", "/v1/nothing"), ("GET", "/v1"),
                         ("GET", "/kb/rivers/nothing/x")]:
        out = httpx.request(method, base_url + path, timeout=30)
        assert out.status_code == 404 and out.json()["error"]["code"] == "unknown_url"
    assert client.models.retrieve("kb:rivers").id == "kb:rivers"
    wrong_method = httpx.get(f"{base_url}/v1/chat/completions", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "use POST" in wrong_method.json()["error"]["message"]
    garbled = httpx.post(f"{base_url}/v1/chat/completions", content=b'{"model": kbqa}', timeout=30,
                         headers={"content-type": "application/json"})
    assert garbled.status_code == 400 and "not valid JSON" in garbled.json()["error"]["message"]
    as_text = httpx.post(f"{base_url}/v1/chat/completions", timeout=30, headers={"content-type": "text/plain"},
                         content=b'{"model": "kbqa", "messages": [{"role": "user", "content": "hi"}]}')
    assert as_text.status_code == 400 and "Content-Type: application/json" in as_text.json()["error"]["message"]
    form = httpx.post(f"{base_url}/kb/rivers/search", data={"query": "Nile"}, timeout=30)  # a form, not JSON
    assert form.status_code == 400 and "'application/x-www-form-urlencoded'" in form.json()["error"]["message"]
    multipart = httpx.post(f"{base_url}/v1/chat/completions", files={"model": (None, "kbqa")}, timeout=30)
    assert multipart.status_code == 400 and multipart.json()["error"]["code"] == "invalid_content_type"
    head = httpx.head(f"{base_url}/v1/models", timeout=30)
    assert head.status_code == 405 and head.headers["allow"] == "GET"
    for method in ("POST", "DELETE", "HEAD"):  # /kb itself, as /v1/models
        listing = httpx.request(method, f"{base_url}/kb", timeout=30)
        assert listing.status_code == 405 and listing.headers["allow"] == "GET"
    slashed = httpx.post(f"{base_url}/kb/a%2Fb/files", files={"files": ("x.txt", b"x")}, timeout=30)
    assert slashed.status_code == 400 and slashed.json()["error"]["code"] == "invalid_name"
    assert "'a/b' cannot be a knowledge-base name: leave out / and \\" in slashed.json()["error"]["message"]
    assert httpx.get(f"{base_url}/v1/models/kb:nope").json()["error"]["code"] == "model_not_found"


def test_embeddings_as_base64_and_bad_embedding_input(base_url: str, client) -> None:  # type: ignore[no-untyped-def]
    floats = client.embeddings.create(model="kbqa-embedding", input="Nile").data[0].embedding
    raw = httpx.post(f"{base_url}/v1/embeddings", timeout=30,
                     json={"input": "Nile", "encoding_format": "base64"}).json()["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(__import__("base64").b64decode(raw), dtype="<f4"), floats)
    usage = client.embeddings.create(model="kbqa-embedding", input=["Nile", "Yangtze"]).usage
    assert usage.prompt_tokens == usage.total_tokens == len("Nile") + len("Yangtze")  # FakeEmbedder: a token a char
    for body, param, says in [({"input": [[1, 2, 3]]}, "input", "token arrays"), ({"input": ""}, "input", "empty"),
                              ({"input": []}, "input", "empty list"),
                              ({"input": "x", "dimensions": 8}, "dimensions", "8")]:
        out = httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=30)
        assert out.status_code == 400 and out.json()["error"]["param"] == param
        assert says in out.json()["error"]["message"]


def test_embeddings_refuse_what_they_cannot_give_before_embedding_and_keep_order_across_slices(
        base_url: str, service: KBQAService) -> None:
    embedder = service.qa.retriever.embedder
    before = len(embedder.calls)
    for body, says in [({"input": ["x"] * 2049}, "at most 2048"), ({"input": ["x"] * 100, "dimensions": 8}, "8")]:
        out = httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=30)
        assert out.status_code == 400 and says in out.json()["error"]["message"]
    assert len(embedder.calls) == before  # nothing was embedded for a request that is refused anyway
    texts = [f"text number {i}" for i in range(130)]
    data = httpx.post(f"{base_url}/v1/embeddings", json={"input": texts}, timeout=30).json()["data"]
    assert embedder.calls[before:] == [64, 64, 2]
    assert [d["index"] for d in data] == list(range(130))
    assert np.allclose([d["embedding"] for d in data], embedder.embed_documents(texts), atol=1e-6)


def test_an_embeddings_client_that_gives_up_stops_the_work(base_url: str, service: KBQAService,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = service.qa.retriever.embedder
    real = embedder.embed_documents

    def slow(texts: list[str]) -> np.ndarray:
        time.sleep(0.2)
        return real(texts)

    monkeypatch.setattr(embedder, "embed_documents", slow)
    before = len(embedder.calls)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base_url}/v1/embeddings", json={"input": ["some text"] * 2000}, timeout=0.5)
    time.sleep(1.5)
    done = len(embedder.calls) - before
    time.sleep(0.5)
    assert len(embedder.calls) - before == done < 2000 // 64  # it stopped, well before the 32 slices


def test_an_upload_where_every_file_fails_creates_no_knowledge_base(base_url: str) -> None:
    files = [("files", ("notes.doc", b"old word file", "application/msword"))]
    report = httpx.post(f"{base_url}/kb/brand-new/files", files=files, timeout=30).json()
    assert [f["status"] for f in report["files"]] == ["failed"]
    assert "brand-new" not in [kb["name"] for kb in httpx.get(f"{base_url}/kb").json()]


@pytest.mark.parametrize(("model", "stream"), [("kbqa", True), ("kb:rivers", True), ("kbqa", False)])
def test_a_client_that_goes_away_stops_the_generation(base_url: str, llm: FakeLLM, model: str, stream: bool) -> None:
    # Streaming: the client closes the stream after the first words. Not streaming: it times out waiting.
    llm.replies, llm.delay = ["word " * 100], 0.1  # 10 s unless stopped
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Longest river in Asia?"}]}
    try:
        if stream:
            with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as response:
                lines = response.iter_lines()
                while "word" not in next(lines):
                    pass
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=1)
        deadline = time.time() + 3
        while llm.streaming and time.time() < deadline:
            time.sleep(0.05)
        assert llm.streaming == 0
    finally:
        llm.delay = 0.0


@pytest.mark.parametrize("max_file_mb", [0.5, 1_000_000])
def test_any_upload_limit_the_settings_accept_serves(service: KBQAService, max_file_mb: float) -> None:
    from fastapi.testclient import TestClient

    app = build_server(service, load_settings(ingest={"max_file_mb": max_file_mb}))
    assert TestClient(app, base_url="http://127.0.0.1:7860").get("/v1/models").status_code == 200


def test_a_question_to_an_empty_knowledge_base_is_a_400_that_clients_do_not_retry(base_url: str) -> None:
    httpx.post(f"{base_url}/kb/emptied/files", files=[("files", ("a.txt", b"Short lived text.", "text/plain"))])
    httpx.delete(f"{base_url}/kb/emptied/files/a.txt")
    asked = httpx.post(f"{base_url}/v1/chat/completions",
                       json={"model": "kb:emptied", "messages": [{"role": "user", "content": "What lived?"}]})
    assert asked.status_code == 400  # a 409 would be retried by the openai client
    assert asked.json()["error"]["code"] == "empty_knowledge_base" and "emptied" in asked.json()["error"]["message"]
    httpx.delete(f"{base_url}/kb/emptied")


def test_requests_for_another_host_name_are_refused(base_url: str) -> None:
    """DNS rebinding: a page of attacker.example re-pointed at 127.0.0.1 must not read the knowledge bases."""
    port = base_url.rsplit(":", 1)[1]
    for path in ("/kb", "/v1/models", "/"):
        refused = httpx.get(base_url + path, headers={"Host": f"attacker.example:{port}"})
        assert refused.status_code == 403, path
        error = refused.json()["error"]
        assert error["code"] == "forbidden_host" and "server.allowed_hosts" in error["message"]
        assert "rivers" not in refused.text
    for name in ("localhost", "127.0.0.1", "[::1]"):
        assert httpx.get(base_url + "/kb", headers={"Host": f"{name}:{port}"}).status_code == 200, name


def test_changes_from_another_site_are_refused_and_change_nothing(base_url: str, service: KBQAService) -> None:
    """CSRF: a form on evil.example posting a file needs no CORS preflight, so the server must refuse it."""
    planted = ("files", ("planted.txt", b"The castle password is banana-99.", "text/plain"))
    for origin in ("http://evil.example", "null", base_url.replace("127.0.0.1", "localhost")):
        refused = httpx.post(f"{base_url}/kb/rivers/files", files=[planted], headers={"Origin": origin})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_origin", origin
        assert httpx.delete(f"{base_url}/kb/rivers", headers={"Origin": origin}).status_code == 403
    assert "planted.txt" not in {d.name for d in service.list_documents("rivers")}
    assert "rivers" in [kb.name for kb in service.list_kbs()]
    # the server's own pages (same origin), and programs that send no Origin, are served
    search = httpx.post(f"{base_url}/kb/rivers/search", json={"query": "Nile", "k": 1}, headers={"Origin": base_url})
    assert search.status_code == 200 and "Nile" in search.text
    assert httpx.get(f"{base_url}/kb", headers={"Origin": "http://evil.example"}).status_code == 200  # a read: CORS
    # A CORS preflight for a change gets the change's answer, not an approval followed by a refusal.
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    foreign = httpx.options(f"{base_url}/v1/chat/completions", headers={"Origin": "http://localhost:3000", **ask})
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "forbidden_origin"
    assert "access-control-allow-origin" not in foreign.headers
    own = httpx.options(f"{base_url}/v1/chat/completions", headers={"Origin": base_url, **ask})
    assert own.status_code == 200
    read = httpx.options(f"{base_url}/kb", headers={"Origin": "http://localhost:3000",
                                                    "Access-Control-Request-Method": "GET"})
    assert read.status_code != 403  # a read is left to CORS, as the read itself is


def test_which_host_names_a_server_answers_to() -> None:
    from kbqa.hostguard import allowed_hosts

    assert allowed_hosts("127.0.0.1", []) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("::1", ["kb.lan "]) == {"localhost", "127.0.0.1", "::1", "kb.lan"}
    assert allowed_hosts("0.0.0.0", []) is None  # noqa: S104 - a LAN bind: any name, unless listed
    assert allowed_hosts("0.0.0.0", ["kb.lan"]) == {"kb.lan"}  # noqa: S104
    assert allowed_hosts("127.0.0.1", ["*"]) is None


def test_the_server_logs_api_requests_not_the_web_page_traffic() -> None:
    import logging

    from kbqa.ui.app import ApiRequestsOnly

    def line(path: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:5000", "GET", path, "1.1", 200), None)

    paths = ["/v1/models", "/kb/sotu/files", "/gradio_api/queue/join", "/"]
    assert [ApiRequestsOnly().filter(line(p)) for p in paths] == [True, True, False, False]


def test_langchain_openai_clients_use_the_local_model_and_knowledge_bases(base_url: str, llm: FakeLLM) -> None:
    # What a LangChain app changes to run on kbqa: the base URL, a dummy key and the model name.
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    chat = ChatOpenAI(base_url=f"{base_url}/v1", api_key="local", model="kb:rivers", max_retries=0)
    llm.replies = ["The Yangtze [1]."]
    assert chat.invoke("Longest river in Asia?").content == "The Yangtze [1]."
    assert llm.prompts[-1][-1].content.count("Yangtze") >= 1  # the knowledge base's passage reached the prompt
    llm.replies = ["North [1]."]
    assert "".join(str(c.content) for c in chat.stream("Which way does the Nile flow?")) == "North [1]."

    plain = ChatOpenAI(base_url=f"{base_url}/v1", api_key="local", model="kbqa", max_retries=0, temperature=0)
    llm.replies = ["Hello."]
    assert plain.invoke([("system", "Be brief."), ("user", "Hi")]).content == "Hello."
    assert [m.role for m in llm.prompts[-1]] == ["system", "user"]

    embeddings = OpenAIEmbeddings(base_url=f"{base_url}/v1", api_key="local", model="kbqa-embedding",
                                  check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["The Nile flows north.", "长江"])
    assert len(vectors) == 2 and len(vectors[0]) == 256
    assert embeddings.embed_query("The Nile flows north.") == pytest.approx(vectors[0], abs=1e-6)


def test_stream_must_be_a_boolean(base_url: str) -> None:
    body = {"model": "kbqa", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}
    out = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert out.status_code == 400 and out.json()["error"]["param"] == "stream"


def test_a_malformed_field_is_named_as_the_client_wrote_it(base_url: str) -> None:
    body = {"model": "kbqa", "messages": [{"role": "user", "content": 5}]}
    out = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert out.status_code == 400 and out.json()["error"]["param"] == "messages.0.content"  # not "...content.str"


def test_sampling_without_a_seed_draws_one_and_a_seed_asks_for_reproducible_replies() -> None:
    from kbqa.llm.base import GenerationParams
    from kbqa.openai_format import ChatRequest

    base = GenerationParams(seed=42, reuse_prompt_cache=True)
    ask = {"messages": [{"role": "user", "content": "Hi"}]}
    greedy = ChatRequest(**ask).params(base)
    assert (greedy.seed, greedy.reuse_prompt_cache) == (42, True)
    sampled = {ChatRequest(**ask, temperature=1.2).params(base).seed for _ in range(5)}
    assert len(sampled) > 1  # as OpenAI: n calls give n draws, not one reply n times
    seeded = ChatRequest(**ask, temperature=1.2, seed=7).params(base)
    assert (seeded.seed, seeded.reuse_prompt_cache) == (7, False)  # the reply must not depend on the request before
    # Any integer is a seed: none of them means "random" to llama.cpp (-1 and 2**32 - 1 do), all are kept apart
    # from their neighbours.
    seeds = [ChatRequest(**ask, temperature=1.2, seed=s).params(base).seed for s in (-1, -2, 2**32 - 1, 2**63 - 1)]
    assert all(0 <= s < 2**32 - 1 for s in seeds) and len(set(seeds)) == 4


def test_a_request_whose_client_left_while_it_waited_for_the_model_is_never_generated(
        base_url: str, llm: FakeLLM) -> None:
    llm.busy.acquire()  # the model is busy with someone else's long answer
    skipped = llm.skipped
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client's timeout: it leaves while still queued
            httpx.post(f"{base_url}/v1/chat/completions", timeout=1, json={
                "model": "kbqa", "messages": [{"role": "user", "content": "Abandoned question?"}]})
        time.sleep(1.5)  # the server notices the departure within half a second
    finally:
        llm.busy.release()
    deadline = time.time() + 5
    while llm.skipped == skipped and time.time() < deadline:
        time.sleep(0.05)
    assert llm.skipped == skipped + 1
    assert not any(m.content == "Abandoned question?" for prompt in llm.prompts for m in prompt)


def test_requests_queued_for_the_model_leave_the_rest_of_the_api_answering(base_url: str, llm: FakeLLM) -> None:
    # Each request waiting for the model held a worker thread of the pool every route shares (40): a client
    # with more in flight made /v1/models, uploads and searches hang until the model was free.
    import concurrent.futures

    def ask(n: int) -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{base_url}/v1/chat/completions", timeout=4, json={
                "model": "kbqa", "messages": [{"role": "user", "content": f"Queued question {n}?"}]})

    llm.busy.acquire()
    try:
        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            asked = [pool.submit(ask, n) for n in range(48)]
            time.sleep(1.5)  # all 48 are in, waiting
            assert httpx.get(f"{base_url}/v1/models", timeout=2).status_code == 200
            assert httpx.post(f"{base_url}/kb/rivers/search", json={"query": "Nile"}, timeout=2).status_code == 200
            concurrent.futures.wait(asked)
    finally:
        llm.busy.release()


def test_half_an_emoji_in_a_message_or_embedding_input_is_a_400_naming_it(base_url: str) -> None:
    # JSON may carry a lone surrogate ("\ud83d": a string cut in the middle of an emoji); the tokenizers cannot
    # read it, and it was a plain-text 500 (which OpenAI clients retry).
    raw = {"headers": {"Content-Type": "application/json"}, "timeout": 30}
    for path, body in [("/v1/embeddings", '{"input": "hi \\ud83d"}'),
                       ("/v1/chat/completions", '{"model": "kb:rivers", "messages": [{"role": "user", '
                                                '"content": "Nile \\ud800?"}]}'),
                       ("/v1/chat/completions", '{"model": "kbqa", "messages": [{"role": "user", "content": '
                                                '[{"type": "text", "text": "hi \\udc00"}]}]}')]:
        out = httpx.post(f"{base_url}{path}", content=body, **raw)  # type: ignore[arg-type]
        assert out.status_code == 400, out.text
        assert "half of a UTF-16 surrogate pair" in out.json()["error"]["message"]


def test_text_parts_of_a_message_are_read_as_separate_lines(client, llm: FakeLLM) -> None:  # type: ignore[no-untyped-def]
    llm.replies = ["ok"]
    client.chat.completions.create(model="kbqa", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is"}, {"type": "text", "text": "the longest river?"}]}])
    assert llm.prompts[-1][-1].content == "What is\nthe longest river?"


def test_a_file_named_as_a_path_gets_the_delete_routes_answer_not_no_endpoint(base_url: str) -> None:
    # A percent-encoded slash (``..%2Fevil.txt``) is decoded before routing: it reached the catch-all, "No
    # endpoint DELETE ...", not the file-deleting route and its document_not_found that says what to send.
    httpx.post(f"{base_url}/kb/pathy/files", files=[("files", ("evil.txt", b"Some text to delete.", "text/plain"))])
    out = httpx.delete(f"{base_url}/kb/pathy/files/..%2F..%2Fetc%2Fevil.txt", timeout=30)
    assert out.status_code == 404 and out.json()["error"]["code"] == "document_not_found", out.text
    assert "give its name (evil.txt)" in out.json()["error"]["message"]
    assert httpx.delete(f"{base_url}/kb/pathy/files/evil.txt", timeout=30).json() == {"deleted": "evil.txt"}


def test_a_knowledge_base_model_is_found_by_its_slug_as_chat_finds_it(client, service: KBQAService) -> None:  # type: ignore[no-untyped-def]
    from openai import NotFoundError

    slug = next(kb.slug for kb in service.list_kbs() if kb.name == "rivers")
    assert client.models.retrieve(f"kb:{slug}").id == f"kb:{slug}"
    with pytest.raises(NotFoundError) as info:
        client.models.retrieve("kb:no-such-base")
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["code"] == "model_not_found"


def test_a_file_part_named_only_by_filename_star_gets_a_message_saying_so(base_url: str) -> None:
    body = (b'--XX\r\nContent-Disposition: form-data; name="files"; filename*=UTF-8\'\'%E6%B5%8B.txt\r\n'
            b'Content-Type: text/plain\r\n\r\nThe blue whale.\r\n--XX--\r\n')
    out = httpx.post(f"{base_url}/kb/rivers/files", content=body, timeout=30,
                     headers={"Content-Type": "multipart/form-data; boundary=XX"})
    assert out.status_code == 400, out.text
    assert "filename=" in out.json()["error"]["message"] and "text field" in out.json()["error"]["message"]
