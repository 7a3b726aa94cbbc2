"""The online endpoint's HTTP surface: a FastAPI app over `pipelines.serve.batcher.Service`.

Routes: `POST /v1/chat/completions` (OpenAI-compatible, `stream` as SSE, extra
`restore` field), `POST /v1/caption`, `POST /v1/vqa` (rows of `pipelines.rows`,
the batch job's Parquet rows as JSON), `GET /v1/models`, `/healthz`, `/readyz`.
`create_app(service)` is the whole HTTP surface and runs without Ray (tests use
it in-process); `pipelines.serve.deployment` puts it on Ray Serve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import socket
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from pipelines.media.fetch import MediaError, load_image, load_video
from pipelines.rows import output_row
from pipelines.serve import api
from pipelines.serve.batcher import Service
from restore.config import GenerationConfig
from restore.prompts import DEFAULT_CAPTION_PROMPTS

logger = logging.getLogger(__name__)

API_KEY_ENV = "RESTORE_API_KEY"
OPEN_ROUTES = {"/healthz", "/readyz"}


# ---------------------------------------------------------------------------- the HTTP surface


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


def _field(loc) -> str:
    # Union branches show up in locations as type tags ('str', 'list[ContentPart]'): not field names.
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p == "str"))]
    return ".".join(parts) or "body"


def _validation_message(err: RequestValidationError | ValidationError) -> tuple[str, str]:
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "body is not valid JSON", "body"
    # The deepest location is the most specific (for a union, the branch that got furthest).
    worst = max(errors, key=lambda e: len(e.get("loc", ())))
    where = _field(worst.get("loc", ()))
    return f"{where}: {worst.get('msg')}", where


def create_app(service: Service, api_key: str | None = None) -> FastAPI:
    settings = service.settings
    key = api_key or settings.api_key or os.environ.get(API_KEY_ENV) or None
    app = FastAPI(title="restore", docs_url=None, redoc_url=None)
    name = settings.served_name()
    worker = f"{socket.gethostname()}:{os.getpid()}"

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if key and request.url.path not in OPEN_ROUTES:
            if request.headers.get("authorization", "") != f"Bearer {key}":
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        message, where = _validation_message(err)
        return _error(400, message, where)

    @app.exception_handler(MediaError)
    async def media(_: Request, err: MediaError):
        return _error(err.status, str(err))

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, err: ValueError):
        return _error(400, str(err))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.engine is None:
            return _error(503, "model is loading", kind="unavailable")
        return {"status": "ready", "model": name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "restore"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: api.ChatRequest):
        request, generation = await _chat_request(service, body)
        if not body.stream:
            result = await service.submit(request, generation)
            return api.chat_response(name, result, generation.max_new_tokens)
        return StreamingResponse(_stream(service, name, request, generation, body), media_type="text/event-stream")

    @app.post("/v1/caption")
    async def caption(body: api.CaptionRequest):
        kind = "images" if body.image is not None else "videos"
        prompt = body.prompt or DEFAULT_CAPTION_PROMPTS[kind]
        return {"rows": await _rows(service, body, "caption", [prompt], worker)}

    @app.post("/v1/vqa")
    async def vqa(body: api.VQARequest):
        if len(body.questions) > settings.max_questions:
            raise MediaError(f"questions: {len(body.questions)} given, at most {settings.max_questions} allowed")
        return {"rows": await _rows(service, body, "vqa", body.questions, worker)}

    return app


def _generation(service: Service, body) -> GenerationConfig:
    s = service.settings
    wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens or s.default_max_tokens
    if wanted > s.max_tokens:
        field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        raise MediaError(f"{field}: {wanted} is over this server's limit of {s.max_tokens}")
    temperature = getattr(body, "temperature", None)
    sample = temperature is not None and temperature > 0
    return GenerationConfig(
        max_new_tokens=wanted, do_sample=sample, temperature=temperature if sample else 1.0,
        top_p=(getattr(body, "top_p", None) or 1.0) if sample else 1.0, seed=getattr(body, "seed", None),
        stop=list(getattr(body, "stop", None) or []),
    )


async def _chat_request(service: Service, body: api.ChatRequest):
    from restore import Request

    s = service.settings
    if any(m.role == "assistant" for m in body.messages) or sum(m.role == "user" for m in body.messages) != 1:
        raise MediaError("messages: one user message (after optional system messages) is supported; "
                         "earlier turns cannot be placed in this model's prompt")
    texts, images, videos = [], [], []
    for i, m in enumerate(body.messages):
        parts = [api.ContentPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        for j, p in enumerate(parts):
            where = f"messages.{i}.content.{j}"
            if p.type == "text":
                texts.append(p.text)
            elif m.role != "user":
                raise MediaError(f"{where}: media is only accepted in the user message")
            elif p.type == "image_url":
                images.append((p.image_url.url, f"{where}.image_url"))
            else:
                videos.append((p.video_url.url, f"{where}.video_url"))
    if len(images) + len(videos) > s.max_images:
        raise MediaError(f"messages: {len(images) + len(videos)} images/videos, at most {s.max_images} allowed")
    if len(videos) > 1:
        raise MediaError("messages: at most one video per request")
    pics = [await run_in_threadpool(load_image, url, where, s.fetch) for url, where in images]
    video = await run_in_threadpool(load_video, *videos[0], s.fetch, s.video_frames) if videos else None
    text = " ".join(t.strip() for t in texts if t.strip())
    count = len(pics) + (len(video.frames) if video else 0)
    request = Request(
        service.engine.media_prompt(text, count), images=pics, video=video.frames if video else None,
        fps=video.fps if video else None, reduction=body.restore,
    )
    return request, _generation(service, body)


async def _stream(service: Service, name: str, request, generation: GenerationConfig, body: api.ChatRequest):
    cid, created = api.completion_id(), int(time.time())
    tokens: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(service.submit(request, generation, on_token=tokens.put_nowait))
    # Text that could still turn into a stop string is held back until it cannot.
    hold = max((len(x) for x in generation.stop), default=1) - 1
    ids: list[int] = []
    sent = ""

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def delta_for(text: str) -> str | None:
        nonlocal sent
        if not text.startswith(sent) or len(text) == len(sent):
            return None
        piece, sent = text[len(sent):], text
        return piece

    yield event(api.chunk(cid, name, created, {"role": "assistant", "content": ""}))
    while True:
        getter = asyncio.ensure_future(tokens.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            break
        ids.append(getter.result())
        text = service.engine.text_of(ids, generation.stop)
        piece = delta_for(text[: len(text) - hold] if hold else text)
        if piece:
            yield event(api.chunk(cid, name, created, {"content": piece}))
    try:
        result = task.result()
    except Exception as err:  # headers are sent: report in-band, as OpenAI's stream does
        yield event({"error": {"message": f"generation failed: {err}", "type": "server_error", "code": 500}})
        yield "data: [DONE]\n\n"
        return
    piece = delta_for(result.text)
    if piece:
        yield event(api.chunk(cid, name, created, {"content": piece}))
    finish = api.finish_reason(result, generation.max_new_tokens)
    yield event(api.chunk(cid, name, created, {}, finish, restore=api.restore_stats(result.stats)))
    if body.stream_options and body.stream_options.include_usage:
        yield event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [], "usage": api.usage(result)})
    yield "data: [DONE]\n\n"


def _media_reference(value: str, field: str) -> str:
    """A data:/s3:/http(s) reference as given, or raw base64 wrapped as a data: URI."""
    if value.startswith("data:") or "://" in value[:16]:
        return value
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{field}: neither base64 nor a data:/s3:// /http(s) reference") from None
    return f"data:application/octet-stream;base64,{value}"


async def _rows(service: Service, body, task: str, prompts: list[str], worker: str) -> list[dict]:
    from restore import Request

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
    results = await asyncio.gather(*(service.submit(make(p), generation) for p in prompts))
    reduction = body.restore or s.reduction
    return [
        output_row(rid if len(prompts) == 1 else f"{rid}:{i}", uri, task, p, s.model, reduction, r, worker)
        for i, (p, r) in enumerate(zip(prompts, results, strict=True))
    ]
