"""The HTTP side of `eve-ms serve`: a FastAPI app over an `Engine`.

    POST /v1/chat/completions   OpenAI chat completions, `stream: true` as server-sent events
    GET  /v1/models             the one model served
    GET  /health                liveness and the engine's counters (waiting, running, batches, ...)
    GET  /                      the chat page (one static file, nothing fetched from outside)

Every error is OpenAI's JSON error body with `param` naming the request field: 400 for a bad
request (malformed JSON included), 413 for an oversized image, 404 for another model's name,
503 with Retry-After when the queue is full. A client that disconnects cancels its job.
"""
from __future__ import annotations

import asyncio
import html
import json
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from eve_ms.serve import protocol
from eve_ms.serve.engine import Job, QueueFull
from eve_ms.serve.prompts import BadRequest, Limits, prepare

RETRY_AFTER_S = 1
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


def _error(status: int, message: str, param=None, kind: str = "invalid_request_error", headers=None):
    return JSONResponse(protocol.error_body(message, param, kind), status_code=status, headers=headers)


def _param(loc) -> str:
    """'messages.0.content.1.image_url.url' from pydantic's error location (loc[0] is "body"), without the
    names pydantic gives union members ('str', 'list[tagged-union[...]]', and the tag after a list index)."""
    parts = []
    for i, part in enumerate(loc[1:], 1):
        if isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none")):
            continue
        if isinstance(part, str) and i >= 3 and isinstance(loc[i - 1], int) and "[" in str(loc[i - 2]):
            continue  # the tag of a tagged-union member: 'image_url' in ...content.1.image_url.image_url.url
        parts.append(str(part))
    return ".".join(parts) or "body"


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(engine, tokenizer, config, template, model_name: str, limits: Limits = Limits()) -> FastAPI:
    from eve_ms.inference.inputs import image_processor_for

    # no /docs: its page loads scripts from a CDN
    app = FastAPI(title="eve-ms", docs_url=None, redoc_url=None, openapi_url=None)
    processor = image_processor_for(config)
    page = resources.files("eve_ms.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        errors = exc.errors()
        first = max(errors, key=lambda e: len(e["loc"]))  # the deepest: a union's other branches fail shallower
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                          "body")
        param = _param(first["loc"])
        return _error(400, f"{param}: {first['msg']}", param)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), kind="not_found_error" if exc.status_code == 404 else
                      "invalid_request_error")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(model_name)))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **engine.snapshot()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "eve-ms"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: protocol.ChatCompletionRequest, request: Request):
        if body.model is not None and body.model != model_name:
            return _error(404, f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                          "model", "not_found_error")
        try:
            prepared = prepare(body, tokenizer, config, template, processor, limits)
        except BadRequest as err:
            return _error(err.status, f"{err.param}: {err.message}" if err.param else err.message, err.param)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def post(kind):
            def callback(value):
                try:
                    loop.call_soon_threadsafe(events.put_nowait, (kind, value))
                except RuntimeError:  # the event loop is gone: the server is shutting down
                    pass
            return callback

        job = Job(prepared.ids, prepared.pixels, prepared.config, post("piece"), post("done"))
        try:
            engine.submit(job)
        except QueueFull as err:
            return _error(503, f"the server is busy: {err}; retry after {RETRY_AFTER_S} s", None, "server_busy",
                          headers={"Retry-After": str(RETRY_AFTER_S)})
        cid = protocol.completion_id()
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return _JobStream(engine, job, _stream(events, cid, model_name, prepared.prompt_tokens, usage))
        done = False
        try:
            while not done:
                try:
                    kind, value = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return _error(499, "the client closed the request")
                    continue
                done = kind == "done"
        finally:
            if not done:  # the client went away (or the server stops): the model has better things to do
                engine.cancel(job)
        if isinstance(value, Exception):
            return _error(500, f"generation failed: {type(value).__name__}: {value}", None, "server_error")
        return protocol.completion(cid, model_name, value, prepared.prompt_tokens)

    return app


class _JobStream(StreamingResponse):
    """Server-sent events of one job. However the response ends, the client gone included (Starlette then
    cancels the stream, maybe before its first event), the job is cancelled: a no-op once it has finished."""

    def __init__(self, engine, job, events):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.engine, self.job = engine, job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine.cancel(self.job)


async def _stream(events, cid, model_name, prompt_tokens, include_usage):
    """Server-sent events of one reply: the role, each piece of text, the finish reason, [DONE]."""
    yield _sse(protocol.chunk(cid, model_name, {"role": "assistant", "content": ""}))
    while True:
        kind, value = await events.get()
        if kind == "piece":
            yield _sse(protocol.chunk(cid, model_name, {"content": value}))
            continue
        if isinstance(value, Exception):
            yield _sse(protocol.error_body(f"generation failed: {type(value).__name__}: {value}", None,
                                           "server_error"))
            return
        yield _sse(protocol.chunk(cid, model_name, {}, protocol.FINISH_REASONS[value.finish_reason]))
        if include_usage:
            yield _sse(protocol.chunk(cid, model_name, usage_=protocol.usage(prompt_tokens, len(value.token_ids))))
        yield "data: [DONE]\n\n"
        return
