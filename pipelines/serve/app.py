"""The online endpoint's HTTP surface: a FastAPI app over `pipelines.serve.batcher.Service`.

Routes: `POST /v1/chat/completions` (OpenAI-compatible, `stream` as SSE, extra
`restore` field), `POST /v1/caption`, `POST /v1/vqa` (rows of `pipelines.rows`,
the batch job's Parquet rows as JSON), `GET /v1/models`, `/healthz`, `/readyz`.
`create_app(service)` is the whole HTTP surface and runs without Ray (tests use
it in-process); `pipelines.serve.deployment` puts it on Ray Serve.

Every 4xx/5xx the app produces has the OpenAI shape `{"error": {"message",
"type", "param", "code"}}` (`api.ErrorBody`), and the OpenAPI document lists
exactly the statuses the server answers. A request is validated completely
(body size, schema, Unicode, model id, prompt length, the engine's own checks)
before a response, or a stream, is started. Each request leaves one structured
log line (id, route, status, tokens, ms); a traceback is logged once, only for
a real server error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import re
import socket
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.media.fetch import MediaError, load_image, load_video
from pipelines.rows import output_row
from pipelines.serve import api
from pipelines.serve.batcher import Overloaded, RequestTimeout, Service
from pipelines.serve.metrics import Metrics
from pipelines.serve.proxy import CODES, error_body, json_bytes, request_id, set_header
from restore.config import GenerationConfig
from restore.engine import PromptTooLong
from restore.prompts import DEFAULT_CAPTION_PROMPTS

logger = logging.getLogger(__name__)
access = logging.getLogger("pipelines.serve.access")

API_KEY_ENV = "RESTORE_API_KEY"
OPEN_ROUTES = {"/healthz", "/readyz"}


class ApiError(Exception):
    """A client-facing error: status, message naming the field, `param`, `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or CODES.get(status)
        self.headers = headers


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict | None = None) -> Response:
    return Response(json_bytes(error_body(status, message, param, code)), status_code=status,
                    media_type="application/json", headers=headers)


def _field(loc) -> str:
    # Union branches show up in locations as type tags ('str', 'list[ContentPart]'): not field names.
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (
        "[" in p or p in ("str", "function-after", "int", "float")))]
    return ".".join(parts) or "body"


def _validation_message(err: RequestValidationError | ValidationError) -> tuple[str, str]:
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "body is not valid JSON", "body"
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return "body: a JSON object is required", "body"
    # The deepest location is the most specific (for a union, the branch that got furthest).
    worst = max(errors, key=lambda e: len(e.get("loc", ())))
    where = _field(worst.get("loc", ()))
    message = str(worst.get("msg")).removeprefix("Value error, ")
    return f"{where}: {message}", where


def _param_of(message: str) -> str | None:
    """The field a library message starts with ('messages.0.content.1.image_url: ...'), if any."""
    head = message.split(":", 1)[0]
    return head if head and re.fullmatch(r"[A-Za-z_][\w.]*", head) else None


def _engine_error(err: ValueError) -> ApiError:
    """The engine's refusal of a request (it names 'request N') as a 400 naming the API field."""
    text = re.sub(r"^request \d+: ", "", str(err))
    if isinstance(err, PromptTooLong):  # over the model's context or this server's max_prompt_tokens
        return ApiError(400, f"messages: {text}", "messages", "context_length_exceeded")
    if "max_batch_tokens" in text:
        return ApiError(400, f"max_tokens: {text}", "max_tokens", "context_length_exceeded")
    if "reduction layer" in text or "ReductionConfig" in text:
        return ApiError(400, f"restore: {text}", "restore")
    return ApiError(400, f"messages: {text}", "messages")


class _BodyTooLarge(Exception):
    pass


class Guard:
    """The outermost app middleware: request id, body limit (Content-Length and while reading), API key, one
    access-log line and the request metrics per request, and the one place a real server error is logged
    (once, with its traceback) and answered 500 in the error shape."""

    def __init__(self, app, service: Service, key: str | None, metrics: Metrics) -> None:
        self.app, self.service, self.key, self.metrics = app, service, key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = request_id(scope)
        set_header(scope, b"x-request-id", rid.encode())
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        path = scope.get("path", "")
        status = {"code": 0, "started": False}
        limit = self.service.settings.max_body_bytes

        async def send_(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        async def reply(resp: Response):
            await resp(scope, receive, send_)

        read = 0

        async def receive_():
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    state["body_too_large"] = True
                    raise _BodyTooLarge
            return message

        try:
            headers = dict(scope.get("headers", ()))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await reply(_error(413, f"body: larger than this server's limit of {limit} bytes", "body"))
            elif self.key and path not in OPEN_ROUTES and not hmac.compare_digest(
                    headers.get(b"authorization", b""), f"Bearer {self.key}".encode()):
                await reply(_error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                   headers={"WWW-Authenticate": 'Bearer realm="restore"'}))
            else:
                await self.app(scope, receive_, send_)
        except _BodyTooLarge:
            if not status["started"]:
                await reply(_error(413, f"body: larger than this server's limit of {limit} bytes", "body"))
        except Exception:
            logger.exception("request %s %s failed", rid, path)
            if not status["started"]:
                await reply(_error(500, f"internal error (request id {rid})"))
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            route = state.get("route", path if path in _ROUTES else "other")
            access.info(json.dumps({"id": rid, "route": route, "method": scope.get("method"),
                                    "status": status["code"], "tokens": state.get("tokens"),
                                    "ms": round(ms, 1)}, ensure_ascii=True))
            self.metrics.request(route, status["code"], ms / 1e3)


_ROUTES = {"/v1/chat/completions", "/v1/caption", "/v1/vqa", "/v1/models", "/healthz", "/readyz"}

_ERRORS = {code: {"model": api.ErrorBody, "description": desc} for code, desc in [
    (400, "Invalid request: the message and `param` name the field"),
    (401, "Missing or wrong API key (only when the server has one)"),
    (404, "Unknown model"),
    (413, "Body or media over the server's limits"),
    (429, "Overloaded: retry after `Retry-After` seconds"),
    (504, "The request ran past the server's time limit and was cancelled"),
]}
_OPEN = {code: _ERRORS[code] for code in (401,)}


def create_app(service: Service, api_key: str | None = None, metrics: Metrics | None = None) -> FastAPI:
    settings = service.settings
    key = api_key or settings.api_key or os.environ.get(API_KEY_ENV) or None
    metrics = metrics or Metrics()
    service.metrics = metrics
    app = FastAPI(title="restore", docs_url=None, redoc_url=None, redirect_slashes=False)
    name = settings.served_name()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    app.add_middleware(Guard, service=service, key=key, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        message, where = _validation_message(err)
        return _error(400, message, where)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError):
        return _error(err.status, err.message, err.param, err.code, err.headers)

    @app.exception_handler(MediaError)
    async def media(_: Request, err: MediaError):
        status = getattr(err, "status", 400)
        param = getattr(err, "param", None) or _param_of(str(err))
        return _error(status, str(err), param, getattr(err, "code", None))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, err: Overloaded):
        return _error(429, str(err), headers={"Retry-After": str(max(1, round(err.retry_after_s)))})

    @app.exception_handler(RequestTimeout)
    async def timed_out(_: Request, err: RequestTimeout):
        return _error(504, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if request.scope.get("state", {}).get("body_too_large"):  # raised while FastAPI read the body
            limit = settings.max_body_bytes
            return _error(413, f"body: larger than this server's limit of {limit} bytes", "body")
        if err.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}", code="not_found")
        if err.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed",
                          headers=err.headers)
        param = "body" if err.status_code == 400 else None
        return _error(err.status_code, str(err.detail), param, headers=err.headers)

    @app.get("/healthz", responses={})
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": api.ErrorBody, "description": "The model is loading"}})
    async def readyz():
        if service.engine is None:
            return _error(503, "model is loading", headers={"Retry-After": "5"})
        return {"status": "ready", "model": name}

    @app.get("/v1/models", responses=_OPEN)
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "restore"}]}

    stream_ok = {200: {"description": "A chat completion, or with `stream: true` server-sent events",
                       "content": {"application/json": {}, "text/event-stream": {}}}}

    @app.post("/v1/chat/completions", responses={**stream_ok, **_ERRORS})
    async def chat(body: api.ChatRequest, http: Request):
        http.state.route = "/v1/chat/completions"
        if body.model is not None and body.model != name:
            raise ApiError(404, f"model: {body.model!r} is not served here; GET /v1/models lists {name!r}",
                           "model", "model_not_found")
        request, generation = await _chat_request(service, body)
        if not body.stream:
            job = await _open(service, request, generation)
            result = await _wait(service, job, http)
            http.state.tokens = result.stats.generated_tokens
            return api.chat_response(name, result, generation.max_new_tokens)
        deltas: asyncio.Queue[str] = asyncio.Queue()
        job = await _open(service, request, generation, on_delta=deltas.put_nowait)
        return StreamingResponse(_stream(service, name, job, deltas, body, http), media_type="text/event-stream")

    @app.post("/v1/caption", responses=_ERRORS)
    async def caption(body: api.CaptionRequest, http: Request):
        kind = "images" if body.image is not None else "videos"
        prompt = body.prompt or DEFAULT_CAPTION_PROMPTS[kind]
        return {"rows": await _rows(service, body, "caption", [prompt], worker, http)}

    @app.post("/v1/vqa", responses=_ERRORS)
    async def vqa(body: api.VQARequest, http: Request):
        if len(body.questions) > settings.max_questions:
            raise ApiError(400, f"questions: {len(body.questions)} given, at most {settings.max_questions} allowed",
                           "questions")
        return {"rows": await _rows(service, body, "vqa", body.questions, worker, http)}

    def openapi():
        """The document says what the server does: 400 (never 422) and the statuses above."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path in doc.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for schema in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(schema, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
    return app


# ---------------------------------------------------------------------------- requests


async def _open(service: Service, request, generation: GenerationConfig, on_delta=None):
    """Queue a request after the prompt-length check; the engine's refusals become 400s naming the field."""
    s = service.settings
    max_chars = s.max_prompt_tokens * 16  # no tokenizer needs more than 16 characters per token to refuse early
    if len(request.prompt) > max_chars:
        raise ApiError(400, f"messages: the text has {len(request.prompt)} characters, more than this server reads "
                       f"for a prompt of at most {s.max_prompt_tokens} tokens", "messages", "context_length_exceeded")
    try:
        return await service.open(request, generation, on_delta)
    except ValueError as err:
        raise _engine_error(err) from None


async def _disconnected(http: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


async def _wait(service: Service, job, http: Request):
    """The job's result; cancelled when the client disconnects first (its slot is freed at the next step)."""
    waiter = asyncio.ensure_future(service.wait(job))
    gone = asyncio.ensure_future(_disconnected(http))
    try:
        done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            job.cancel()
            raise ApiError(499, "client closed the request")
        try:
            return waiter.result()
        except ValueError as err:  # static batching checks the request when its batch runs
            raise _engine_error(err) from None
    finally:
        gone.cancel()
        if not waiter.done():
            waiter.cancel()


def _generation(service: Service, body) -> GenerationConfig:
    s = service.settings
    wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens or s.default_max_tokens
    if wanted > s.max_tokens:
        field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        raise ApiError(400, f"{field}: {wanted} is over this server's limit of {s.max_tokens}", field)
    temperature = getattr(body, "temperature", None)
    sample = temperature is not None and temperature > 0
    return GenerationConfig(
        max_new_tokens=wanted, do_sample=sample, temperature=temperature if sample else 1.0,
        top_p=(getattr(body, "top_p", None) or 1.0) if sample else 1.0, seed=getattr(body, "seed", None),
        stop=list(getattr(body, "stop", None) or []), ignore_eos=getattr(body, "ignore_eos", False),
    )


async def _chat_request(service: Service, body: api.ChatRequest):
    from restore import Request

    s = service.settings
    if any(m.role == "assistant" for m in body.messages) or sum(m.role == "user" for m in body.messages) != 1:
        raise ApiError(400, "messages: one user message (after optional system messages) is supported; "
                       "earlier turns cannot be placed in this model's prompt", "messages")
    generation = _generation(service, body)
    texts, images, videos = [], [], []
    for i, m in enumerate(body.messages):
        parts = [api.ContentPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        for j, p in enumerate(parts):
            where = f"messages.{i}.content.{j}"
            if p.type == "text":
                texts.append(p.text)
            elif m.role != "user":
                raise ApiError(400, f"{where}: media is only accepted in the user message", where)
            elif p.type == "image_url":
                images.append((p.image_url.url, f"{where}.image_url"))
            else:
                videos.append((p.video_url.url, f"{where}.video_url"))
    if len(images) + len(videos) > s.max_images:
        raise ApiError(400, f"messages: {len(images) + len(videos)} images/videos, at most {s.max_images} allowed",
                       "messages")
    if len(videos) > 1:
        raise ApiError(400, "messages: at most one video per request", "messages")
    text = " ".join(t.strip() for t in texts if t.strip())
    if not text and not images and not videos:
        raise ApiError(400, "messages: the prompt is empty and there is no image or video; give some text",
                       "messages")
    pics = [await run_in_threadpool(load_image, url, where, s.fetch) for url, where in images]
    video = await run_in_threadpool(load_video, *videos[0], s.fetch, s.video_frames) if videos else None
    count = len(pics) + (len(video.frames) if video else 0)
    request = Request(
        service.engine.media_prompt(text, count), images=pics, video=video.frames if video else None,
        fps=video.fps if video else None, reduction=body.restore,
    )
    return request, generation


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=True)}\n\n"


async def _stream(service: Service, name: str, job, deltas: asyncio.Queue, body: api.ChatRequest, http: Request):
    """SSE chunks from the scheduler's text deltas. Text that could still turn into a stop string, and trailing
    spaces, are held back until they cannot; the final text is the non-streamed one. A client that goes away
    closes this generator: the request is cancelled and leaves the batch at the next decode step."""
    cid, created = api.completion_id(), int(time.time())
    generation = job.generation
    hold = max((len(x) for x in generation.stop), default=1) - 1
    raw, sent = "", ""
    rid = http.state.request_id
    waiter = asyncio.ensure_future(service.wait(job))

    def visible(text: str, final: bool) -> str:
        for s in generation.stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        text = text.lstrip()
        if not final:
            text = text[: len(text) - hold] if hold else text
            text = text.rstrip()
        return text

    def delta_for(text: str) -> str | None:
        nonlocal sent
        if not text.startswith(sent) or len(text) == len(sent):
            return None
        piece, sent = text[len(sent):], text
        return piece

    try:
        yield _event(api.chunk(cid, name, created, {"role": "assistant", "content": ""}))
        while True:
            getter = asyncio.ensure_future(deltas.get())
            done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            raw += getter.result()
            while not deltas.empty():
                raw += deltas.get_nowait()
            piece = delta_for(visible(raw, final=False))
            if piece:
                yield _event(api.chunk(cid, name, created, {"content": piece}))
        try:
            result = waiter.result()
        except RequestTimeout as err:  # headers are sent: report in-band, in the error shape
            http.state.tokens = None
            yield _event(error_body(504, str(err)))
            yield "data: [DONE]\n\n"
            return
        except Exception:
            logger.exception("request %s: generation failed", rid)
            yield _event(error_body(500, f"generation failed (request id {rid})"))
            yield "data: [DONE]\n\n"
            return
        http.state.tokens = result.stats.generated_tokens
        piece = delta_for(result.text)
        if piece:
            yield _event(api.chunk(cid, name, created, {"content": piece}))
        finish = api.finish_reason(result, generation.max_new_tokens)
        yield _event(api.chunk(cid, name, created, {}, finish, restore=api.restore_stats(result.stats)))
        if body.stream_options and body.stream_options.include_usage:
            yield _event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                          "choices": [], "usage": api.usage(result)})
        yield "data: [DONE]\n\n"
    finally:
        if not waiter.done():
            waiter.cancel()
            job.cancel()


def _media_reference(value: str, field: str) -> str:
    """A data:/s3:/http(s) reference as given, or raw base64 wrapped as a data: URI."""
    if value.startswith("data:") or "://" in value[:16]:
        return value
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: neither base64 nor a data:/s3:// /http(s) reference", field) from None
    return f"data:application/octet-stream;base64,{value}"


async def _rows(service: Service, body, task: str, prompts: list[str], worker: str, http: Request) -> list[dict]:
    from restore import Request

    http.state.route = f"/v1/{task}"
    s = service.settings
    generation = _generation(service, body)
    rid = body.id or uuid.uuid4().hex[:16]
    if body.image is not None:
        ref = _media_reference(body.image, "image")
        image = await run_in_threadpool(load_image, ref, "image", s.fetch)
        make = lambda p: Request(service.engine.media_prompt(p, 1), images=[image], reduction=body.restore)  # noqa: E731
        uri = body.image if "://" in body.image[:16] else f"inline:{rid}"
    else:
        ref = _media_reference(body.video, "video")
        video = await run_in_threadpool(load_video, ref, "video", s.fetch, s.video_frames)
        make = lambda p: Request(service.engine.media_prompt(p, len(video.frames)), video=video.frames,  # noqa: E731
                                 fps=video.fps, reduction=body.restore)
        uri = body.video if "://" in body.video[:16] else f"inline:{rid}"
    jobs = []
    try:
        for p in prompts:
            jobs.append(await _open(service, make(p), generation))
        results = await asyncio.gather(*(_wait(service, j, http) if i == 0 else service.wait(j)
                                         for i, j in enumerate(jobs)))
    except BaseException:
        for j in jobs:
            j.cancel()
        raise
    http.state.tokens = sum(r.stats.generated_tokens for r in results)
    reduction = body.restore or s.reduction
    return [
        output_row(rid if len(prompts) == 1 else f"{rid}:{i}", uri, task, p, s.model, reduction, r, worker)
        for i, (p, r) in enumerate(zip(prompts, results, strict=True))
    ]
