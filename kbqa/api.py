"""OpenAI-compatible HTTP API plus knowledge-base endpoints, served beside the web app.

- ``GET  /v1/models``: ``kbqa`` (plain chat with the local model) and ``kb:<name>`` per knowledge base.
- ``POST /v1/chat/completions``: OpenAI request/response shapes, streaming (SSE) or not. With model
  ``kb:<name>`` the last user message is answered from that knowledge base and the response carries a
  top-level ``sources`` list (in the last chunk when streaming).
- ``POST /v1/embeddings``: vectors from the configured embedding model.
- ``GET /kb``, ``GET|POST /kb/{name}/files``, ``DELETE /kb/{name}/files/{file}``, ``DELETE /kb/{name}``,
  ``POST /kb/{name}/search``.

Errors are ``{"error": {"message", "type"}}`` with the ``KBQAError``'s status code.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from kbqa.errors import FileTooLarge, KBQAError
from kbqa.ingest import file_too_large
from kbqa.llm.base import GenerationParams
from kbqa.schema import AnswerEvent, ChatMessage, FileResult, IngestReport
from kbqa.service import KBQAService

CHAT_MODEL = "kbqa"
KB_PREFIX = "kb:"


class Message(BaseModel):
    """An OpenAI chat message (text content only)."""

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text, joining content parts."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request kbqa honours."""

    model: str = CHAT_MODEL
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request."""

    input: str | list[str]
    model: str = "kbqa-embedding"


class SearchRequest(BaseModel):
    """Retrieval only."""

    query: str = Field(..., min_length=1)
    k: int = Field(5, ge=1, le=50)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def build_api(service: KBQAService, defaults: GenerationParams, max_file_mb: float = 100.0) -> FastAPI:
    """The API as a FastAPI app (mount the web app on it, or serve it alone)."""
    api = FastAPI(title="kbqa", description="Local knowledge-base QA: OpenAI-compatible API.")

    @api.exception_handler(KBQAError)
    async def kbqa_error(_: Request, exc: KBQAError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code,
                            content={"error": {"message": str(exc), "type": type(exc).__name__}})

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        return JSONResponse(status_code=422, content={"error": {"message": f"Invalid request: {problems}.",
                                                                "type": "invalid_request_error"}})

    def params(req: ChatRequest) -> GenerationParams:
        # Plain chat keeps llama.cpp's prompt cache (each turn resends the history); answers from a
        # knowledge base go through the QA engine, which does not.
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        return GenerationParams(
            max_tokens=req.max_completion_tokens or req.max_tokens or defaults.max_tokens,
            temperature=defaults.temperature if req.temperature is None else req.temperature,
            top_p=defaults.top_p if req.top_p is None else req.top_p,
            repetition_penalty=defaults.repetition_penalty, stop=tuple(stop))

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        now = int(time.time())
        ids = [CHAT_MODEL] + [KB_PREFIX + kb.name for kb in service.list_kbs()]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "kbqa"}
                                            for i in ids]}

    @api.post("/v1/chat/completions", response_model=None)
    def chat(req: ChatRequest) -> Any:
        if not req.messages:
            raise KBQAError("messages is empty.")
        if req.model.startswith(KB_PREFIX):
            last = max((i for i, m in enumerate(req.messages) if m.role == "user"), default=None)
            if last is None:
                raise KBQAError("messages has no user message: put the question in a 'user' message.")
            history = [ChatMessage(m.role, m.text()) for m in req.messages[:last] if m.role in ("user", "assistant")]
            events = service.ask_stream(req.model[len(KB_PREFIX):], req.messages[last].text(), history)
        elif req.model == CHAT_MODEL:
            events = (AnswerEvent("token", text=t) for t in service.chat_stream(
                [ChatMessage(m.role, m.text()) for m in req.messages], params(req)))
        else:
            raise KBQAError(f"Unknown model '{req.model}': use '{CHAT_MODEL}' or 'kb:<knowledge base>' "
                            "(GET /v1/models lists them).")
        first = next(events, None)  # surface errors (unknown knowledge base...) before streaming starts
        stream = _chain(first, events)
        cid, created = _completion_id(), int(time.time())
        if req.stream:
            return StreamingResponse(_sse(stream, cid, created, req.model), media_type="text/event-stream")
        text, sources = "", None
        for event in stream:
            if event.kind == "token":
                text += event.text
            elif event.kind == "done" and event.answer is not None:
                text, sources = event.answer.answer, [s.to_dict() for s in event.answer.sources]
        body: dict[str, Any] = {
            "id": cid, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        if sources is not None:
            body["sources"] = sources
        return body

    @api.post("/v1/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = service.embed(texts)
        return {"object": "list", "model": req.model,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]}

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
        service.delete_document(name, file_name)
        return {"deleted": file_name}

    @api.delete("/kb/{name}")
    def delete_kb(name: str) -> dict[str, str]:
        service.delete_kb(name)
        return {"deleted": name}

    @api.post("/kb/{name}/search")
    def search(name: str, req: SearchRequest) -> list[dict[str, Any]]:
        return [s.to_dict() | {"rank": s.rank} for s in service.search(name, req.query, req.k)]

    return api


def _chain(first: AnswerEvent | None, rest: Iterator[AnswerEvent]) -> Iterator[AnswerEvent]:
    if first is not None:
        yield first
    yield from rest


def _sse(events: Iterator[AnswerEvent], cid: str, created: int, model: str) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    try:
        for event in events:
            if event.kind == "token":
                streamed = True
                yield chunk({"content": event.text})
            elif event.kind == "done" and event.answer is not None:
                extra = {"sources": [s.to_dict() for s in event.answer.sources]}
                if not streamed and event.answer.answer:  # e.g. the refusal sentence, not generated
                    yield chunk({"content": event.answer.answer})
                yield chunk({}, "stop", **extra)
                yield "data: [DONE]\n\n"
                return
    except KBQAError as exc:
        yield f"data: {json.dumps({'error': {'message': str(exc), 'type': type(exc).__name__}})}\n\n"
        return
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"
