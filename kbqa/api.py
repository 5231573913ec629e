"""OpenAI-compatible HTTP API plus knowledge-base endpoints, served beside the web app.

- ``GET  /v1/models``, ``GET /v1/models/{id}``: ``kbqa`` (plain chat with the local model) and
  ``kb:<name>`` per knowledge base.
- ``POST /v1/chat/completions``: OpenAI request/response shapes, streaming (SSE) or not, with ``usage`` and
  ``finish_reason`` (``stop`` / ``length``). With model ``kb:<name>`` the last user message is answered
  from that knowledge base and the response carries top-level ``sources``, ``refused``, ``notice`` and
  ``query`` (when streaming, on the chunk with the ``finish_reason``). Parameters kbqa cannot honour
  (``n`` > 1, tools, ``response_format`` other than text, ``logprobs``, penalties, ``logit_bias``, image or
  audio content) are refused with a 400 naming the parameter, never silently ignored. A client that
  disconnects stops the generation, streaming or not.
- ``POST /v1/embeddings``: vectors from the configured embedding model (float or base64), with ``usage``.
- ``GET /kb``, ``GET|POST /kb/{name}/files``, ``DELETE /kb/{name}/files/{file}``, ``DELETE /kb/{name}``,
  ``POST /kb/{name}/search``.

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with the ``KBQAError``'s status code.
The request and response shapes are in ``kbqa.openai_format``.
"""

from __future__ import annotations

import base64
import contextlib
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import anyio
import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.routing import Match

from kbqa.errors import (
    EmptyKnowledgeBase,
    FileTooLarge,
    IncompatibleIndex,
    KBQAError,
    KnowledgeBaseNotFound,
)
from kbqa.ingest import file_too_large, upload_name
from kbqa.llm.base import ABANDONED, Usage
from kbqa.names import check_kb_name
from kbqa.openai_format import (
    CHAT_MODEL,
    EMBEDDING_MODEL,
    KB_PREFIX,
    ROLES,
    ChatRequest,
    EmbeddingRequest,
    InvalidValue,
    ModelNotFound,
    Unsupported,
    answer_fields,
    completion_id,
    error_body,
    error_code,
    sse_chunks,
    usage_body,
)
from kbqa.schema import AnswerEvent, ChatMessage, FileResult, IngestReport
from kbqa.service import KBQAService


class SearchRequest(BaseModel):
    """``POST /kb/{name}/search``: retrieval only."""

    query: str = Field(..., min_length=1)
    k: int = Field(5, ge=1, le=50)

    @field_validator("query")
    @classmethod
    def _words(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("the query is only white space: send some words to search for")
        return query


#: OpenAI's limit on the texts of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
#: Texts embedded between checks that the client is still there.
_EMBED_SLICE = 64
#: Methods the catch-all API routes answer (404 or 405 in OpenAI's shape); OPTIONS is left to CORS preflight.
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def build_api(service: KBQAService, max_file_mb: float = 100.0) -> FastAPI:
    """The API as a FastAPI app (mount the web app on it, or serve it alone)."""
    api = FastAPI(title="kbqa", description="Local knowledge-base QA: OpenAI-compatible API.")
    started = int(time.time())
    chats: list[anyio.CapacityLimiter] = []  # made in the event loop, on the first chat

    @api.exception_handler(KBQAError)
    async def kbqa_error(_: Request, exc: KBQAError) -> JSONResponse:
        # OpenAI clients retry a 5xx (twice, with back-off): kbqa's are settings, models or disks, which a
        # retry cannot mend, so say so (openai-python and others honour x-should-retry).
        headers = {"x-should-retry": "false"} if exc.status_code >= 500 else None
        return JSONResponse(status_code=exc.status_code, headers=headers,
                            content=error_body(str(exc), exc.status_code, error_code(exc), exc.param))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        # FastAPI's own errors (a body that is no text in a Unicode encoding: "There was an error parsing the
        # body") in OpenAI's shape, as every other API error.
        if not request.url.path.startswith(("/v1", "/kb")):
            return await http_exception_handler(request, exc)
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return JSONResponse(status_code=400, content=error_body(
                "The request body could not be read as JSON: send it encoded as UTF-8.", 400, "invalid_json"))
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content=error_body(str(exc.detail), exc.status_code))

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        def where(e: dict[str, Any]) -> str:
            # pydantic names the branch of a union it tried (``content.str``, ``stop.list[str]``): not a parameter
            return ".".join(str(p) for p in e.get("loc", ()) if p != "body" and not _UNION_BRANCH.match(str(p))) \
                or "body"

        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            at = errors[0].get("loc", ("body", "?"))[-1]
            return JSONResponse(status_code=400, content=error_body(
                f"The request body is not valid JSON (error at character {at}).", 400, "invalid_json"))
        kind = request.headers.get("content-type", "")
        if errors and tuple(errors[0].get("loc", ())) == ("body",) and "json" not in kind:
            return JSONResponse(status_code=400, content=error_body(
                f"The request body was sent as {kind or 'no content type'!r}: send JSON with the header "
                "Content-Type: application/json.", 400, "invalid_content_type"))
        if errors and "Expected UploadFile" in str(errors[0].get("msg")):  # a part with no plain filename=
            return JSONResponse(status_code=400, content=error_body(
                f"{where(errors[0])} reached kbqa as a text field, not a file: send each file as a multipart part "
                "whose Content-Disposition has a filename=\"...\" (a name given only as filename*=UTF-8''... is not "
                "read as a file).", 400, "invalid_value", where(errors[0])))
        problems = "; ".join(f"{where(e)}: {e.get('msg')}" for e in errors)
        param = where(errors[0]) if errors else None
        # 400, as OpenAI answers a value out of range (clients catch it as BadRequestError), not FastAPI's 422.
        return JSONResponse(status_code=400, content=error_body(f"Invalid request: {problems}.", 400,
                                                                "invalid_value", param))

    def model_card(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": started, "owned_by": "kbqa"}

    def model_ids() -> list[str]:
        return [CHAT_MODEL, EMBEDDING_MODEL] + [KB_PREFIX + kb.name for kb in service.list_kbs()]

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(i) for i in model_ids()]}

    @api.get("/v1/models/{model_id:path}")
    def model(model_id: str) -> Any:
        # A knowledge base answers to its slug as well as its name (``kb:<slug>``), as chat does.
        if model_id not in model_ids() and not (model_id.startswith(KB_PREFIX)
                                                and service.root.folder_for(model_id[len(KB_PREFIX):])):
            raise ModelNotFound(model_id)
        return model_card(model_id)

    def answer_events(req: ChatRequest, usage: Usage) -> Iterator[AnswerEvent]:
        if req.model.startswith(KB_PREFIX):
            # System messages are not passed on: the knowledge base's prompt template sets the instructions.
            last = max((i for i, m in enumerate(req.messages) if m.role == "user"), default=None)
            if last is None:
                raise InvalidValue("messages", "messages has no user message: put the question in a 'user' message.")
            if not req.messages[last].text().strip():
                raise InvalidValue("messages", "The last user message is empty: put the question in it.")
            history = [ChatMessage(m.role, m.text()) for m in req.messages[:last] if m.role in ("user", "assistant")]
            return service.ask_stream(req.model[len(KB_PREFIX):], req.messages[last].text(), history,
                                      req.params(service.answer_params), usage)
        if req.model == CHAT_MODEL:
            # Plain chat keeps llama.cpp's prompt cache (each turn resends the history).
            base = replace(service.answer_params, reuse_prompt_cache=True)
            messages = [ChatMessage(ROLES[m.role], m.text()) for m in req.messages]
            return (AnswerEvent("token", text=t) for t in service.chat_stream(messages, req.params(base), usage))
        if req.model == EMBEDDING_MODEL:
            raise Unsupported("model", f"'{EMBEDDING_MODEL}' is the embedding model (POST /v1/embeddings); chat "
                                       f"with '{CHAT_MODEL}' or '{KB_PREFIX}<knowledge base>'.")
        raise ModelNotFound(req.model)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest, request: Request) -> Any:
        if not req.messages:
            raise InvalidValue("messages", "messages is empty.")
        req.check_supported()
        usage = Usage()

        def start() -> Iterator[AnswerEvent]:
            # Up to the first token (or the answer, when the model is not asked): errors such as an unknown
            # knowledge base or a prompt too long for the model's context are an error status, not a stream
            # that breaks off after its first chunk.
            events = answer_events(req, usage)
            head: list[AnswerEvent] = []
            try:
                while (event := next(events, None)) is not None:  # a generator that raised is finished: no close
                    head.append(event)
                    if event.kind in ("token", "done"):
                        break
            except (KnowledgeBaseNotFound, EmptyKnowledgeBase, IncompatibleIndex) as exc:
                exc.param = "model"  # the knowledge base is named by `model`
                raise
            return _chain(head, events)

        # Blocking work runs in worker threads: a request waiting for the model holds one, from a pool of its own
        # (in the default pool, 40 waiting requests left none for /v1/models or an upload). A client that leaves
        # meanwhile (its timeout) is noticed, and the model skips its work when its turn comes.
        gone = threading.Event()
        token = ABANDONED.set(gone)  # copied into the worker thread's context
        try:
            stream = await _while_there(request, gone, start, _limiter(chats))
        finally:
            ABANDONED.reset(token)
        if gone.is_set():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)  # type: ignore[attr-defined]
            return Response(status_code=499)
        cid, created = completion_id(), int(time.time())
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return _ClosingStream(sse_chunks(stream, cid, created, req.model, usage, include_usage))
        text, answer = "", None
        try:
            while (event := await anyio.to_thread.run_sync(_next, stream)) is not None:
                if event.kind == "token":
                    text += event.text
                elif event.kind == "done":
                    answer = event.answer
                if await request.is_disconnected():  # the client gave up (a timeout): stop generating for it
                    return Response(status_code=499)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)  # type: ignore[attr-defined]
        body: dict[str, Any] = {
            "id": cid, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer if answer else text},
                         "finish_reason": usage.finish_reason}],
            "usage": usage_body(usage)}
        return body | answer_fields(answer)

    @api.post("/v1/embeddings", response_model=None)
    async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise Unsupported("input", "input is an empty list: there is nothing to embed.")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise Unsupported("input", f"input has {len(texts)} texts; at most {MAX_EMBEDDING_INPUTS} go in one "
                                       "request (as OpenAI's limit): send them in several.")
        if not all(isinstance(t, str) for t in texts):
            raise Unsupported("input", "input must be a string or a list of strings: token arrays are not supported "
                                       "(LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)).")
        strings = cast(list[str], texts)
        if not all(t.strip() for t in strings):
            raise Unsupported("input", "input holds an empty string: there is nothing to embed.")
        if req.dimensions is not None:  # checked before the work (the model loads for it)
            dim = await anyio.to_thread.run_sync(lambda: service.embedding_dim)
            if req.dimensions != dim:
                raise Unsupported("dimensions", f"The embedding model gives {dim} dimensions; "
                                                f"{req.dimensions} is not available.")
        parts = []
        for start in range(0, len(texts), _EMBED_SLICE):  # a client that gives up stops the work for it
            if await request.is_disconnected():
                return Response(status_code=499)
            parts.append(await anyio.to_thread.run_sync(service.embed, strings[start:start + _EMBED_SLICE]))
        vectors = np.concatenate(parts)

        def encode(v: Any) -> Any:
            if req.encoding_format == "base64":
                return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            return v.tolist()

        tokens = await anyio.to_thread.run_sync(service.embedding_tokens, strings)
        return {"object": "list", "model": req.model,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.get("/kb")
    def list_kbs() -> list[dict[str, Any]]:
        return [kb.__dict__ for kb in service.list_kbs()]

    @api.get("/kb/{name}/files")
    def list_files(name: str) -> list[dict[str, Any]]:
        return [d.__dict__ for d in service.list_documents(name)]

    @api.post("/kb/{name}/files")
    def upload(name: str, files: list[UploadFile] = File(...)) -> dict[str, Any]:  # noqa: B008
        limit = max_file_mb * 2**20
        if all(f.size is not None and f.size > limit for f in files):
            raise FileTooLarge(f"Every file is over the {max_file_mb:g} MB limit (ingest.max_file_mb): split them "
                               "or raise the limit.")
        with tempfile.TemporaryDirectory(prefix="kbqa-upload-") as tmp:
            pairs, too_large = [], {}
            for n, f in enumerate(files):
                shown = f.filename or f"upload-{n}"
                if f.size is not None and f.size > limit:  # not copied: refused by its size alone
                    shown = upload_name(shown)  # named as the ingest names a file
                    too_large[n] = FileResult(shown, "failed", reason=str(file_too_large(shown, f.size, limit)))
                    continue
                path = Path(tmp) / f"upload-{n}"
                with open(path, "wb") as out:
                    while block := f.file.read(1 << 20):
                        out.write(block)
                pairs.append((path, shown))
            report = service.add_files(name, pairs) if pairs else IngestReport(name)
        done = iter(report.files)
        report.files = [too_large[n] if n in too_large else next(done) for n in range(len(files))]
        return report.to_dict()

    @api.delete("/kb/{name}/files/{file_name}")
    def delete_file(name: str, file_name: str) -> dict[str, str]:
        return {"deleted": service.delete_document(name, file_name)}

    @api.delete("/kb/{name}")
    def delete_kb(name: str) -> dict[str, str]:
        return {"deleted": service.delete_kb(name)}

    @api.post("/kb/{name}/search")
    def search(name: str, req: SearchRequest) -> list[dict[str, Any]]:
        return [s.to_dict() | {"rank": s.rank} for s in service.search(name, req.query, req.k)]

    # Anything else under the API's prefixes is an API error, not the web app's HTML page.
    @api.api_route("/v1", methods=_ANY_METHOD, include_in_schema=False)
    @api.api_route("/v1/{rest:path}", methods=_ANY_METHOD, include_in_schema=False)
    @api.api_route("/kb", methods=_ANY_METHOD, include_in_schema=False)
    @api.api_route("/kb/{rest:path}", methods=_ANY_METHOD, include_in_schema=False)
    def unknown(request: Request, rest: str = "") -> JSONResponse:
        # A knowledge-base name with a slash, sent percent-encoded (%2F), reaches here decoded into two parts of
        # the path: refused for its name, as a name with a backslash is.
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        encoded = re.match(r"/kb/([^/]*%2f[^/]*)(?:/|$)", raw, re.I)
        if encoded:
            check_kb_name(unquote(encoded.group(1)))
        # So does a file's name given as a path (``..%2Fnotes.txt``): the delete route's rules answer it (a path
        # names the file added from there), not "No endpoint".
        file_path = re.fullmatch(r"/kb/([^/]+)/files/([^/]*%2f.*)", raw, re.I)
        if file_path and request.method == "DELETE":
            return JSONResponse({"deleted": service.delete_document(unquote(file_path.group(1)),
                                                                    unquote(file_path.group(2)))})
        allowed: set[str] = set()
        for route in api.router.routes:  # a known path asked with another method
            if isinstance(route, APIRoute) and route.endpoint is not unknown \
                    and route.matches(request.scope)[0] == Match.PARTIAL:
                allowed |= route.methods or set()
        if allowed:
            return JSONResponse(status_code=405, headers={"Allow": ", ".join(sorted(allowed))}, content=error_body(
                f"{request.url.path} does not take {request.method}: use {' or '.join(sorted(allowed))}.", 405,
                "method_not_allowed"))
        return JSONResponse(status_code=404, content=error_body(
            f"No endpoint {request.method} {request.url.path}: kbqa serves /v1/models, /v1/chat/completions, "
            "/v1/embeddings and /kb (see the README's API section).", 404, "unknown_url"))

    return api


#: Chat requests that may wait for the model in worker threads at once; more wait without a thread.
_CHAT_THREADS = 32
#: Seconds between checks that a client waiting for the model is still there.
_PRESENCE_CHECK = 0.5


def _limiter(holder: list[anyio.CapacityLimiter]) -> anyio.CapacityLimiter:
    """The limiter kept in ``holder``, made on first use (in the event loop, as anyio requires)."""
    if not holder:
        holder.append(anyio.CapacityLimiter(_CHAT_THREADS))
    return holder[0]


async def _while_there(request: Request, gone: threading.Event, work: Callable[[], Iterator[AnswerEvent]],
                       threads: anyio.CapacityLimiter) -> Iterator[AnswerEvent]:
    """``work()`` in a worker thread, setting ``gone`` if the client disconnects before it returns."""
    box: list[Any] = []
    finished = anyio.Event()

    async def run() -> None:
        try:
            box.append(await anyio.to_thread.run_sync(work, limiter=threads))
        except Exception as exc:  # raised below, in the request's own task
            box.append(exc)
        finally:
            finished.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        while not finished.is_set():
            with anyio.move_on_after(_PRESENCE_CHECK):
                await finished.wait()
            if not finished.is_set() and not gone.is_set() and await request.is_disconnected():
                gone.set()
    if isinstance(box[0], Exception):
        raise box[0]
    return cast(Iterator[AnswerEvent], box[0])


def _next(events: Iterator[AnswerEvent]) -> AnswerEvent | None:
    return next(events, None)


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|list|dict|tuple)(\[.*\])?$")


def _chain(head: list[AnswerEvent], rest: Iterator[AnswerEvent]) -> Iterator[AnswerEvent]:
    try:
        yield from head
        yield from rest
    finally:
        getattr(rest, "close", lambda: None)()  # also when the reader stops within ``head``


class _ClosingStream(StreamingResponse):
    """Server-sent events from a blocking iterator (read in worker threads), closed when the response ends.

    Closing the generator chain stops the generation (the backends cancel when their stream is closed).
    Starlette does not close the body iterator when a client disconnects; left to the garbage collector,
    a dropped stream would go on generating, holding the model, for minutes.
    """

    def __init__(self, chunks: Iterator[str]) -> None:
        self._chunks = chunks
        super().__init__(self._read(), media_type="text/event-stream")

    async def _read(self) -> AsyncIterator[str]:
        done = object()
        while (chunk := await anyio.to_thread.run_sync(next, self._chunks, done)) is not done:
            yield chunk  # type: ignore[misc]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)

    def _close(self) -> None:
        with contextlib.suppress(ValueError):  # still running in a worker thread: it ends with its piece
            self._chunks.close()  # type: ignore[attr-defined]
