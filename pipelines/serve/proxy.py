"""What the Serve proxy runs ahead of the replicas, and the error shape both share.

The proxy imports this module (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=pipelines.serve.proxy:proxy_middlewares`)
before it reports ready, so it imports no torch, transformers or `restore`: on a loaded node the seconds those
imports take made Serve's controller give up on the proxy at start (the tests saw the proxy actor die).
"""

from __future__ import annotations

import json
import random
import re
import uuid

SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
          504: "timeout_error"}
CODES = {400: "invalid_value", 401: "invalid_api_key", 404: "not_found", 413: "request_too_large",
          429: "rate_limit_exceeded", 500: "internal_error", 503: "unavailable", 504: "timeout"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code or CODES.get(status)}}


def json_bytes(payload) -> bytes:
    # ASCII escapes: text echoed from a client (a lone surrogate in a key) can never break the encoder.
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str).encode()


def request_id(scope) -> str:
    """The client's X-Request-ID when it is a short printable token, else a new one."""
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            try:
                rid = v.decode("ascii")
            except UnicodeDecodeError:
                break
            if SAFE_ID.match(rid):
                return rid
            break
    return uuid.uuid4().hex


def set_header(scope, name: bytes, value: bytes) -> None:
    scope["headers"] = [(k, v) for k, v in scope.get("headers", ()) if k != name] + [(name, value)]


class ProxyMiddleware:
    """For the Serve proxy (`http_options.middlewares`, outermost, ahead of Serve's own request-id code, which
    decodes the header as UTF-8 and answered 500 on other bytes): a non-ASCII or odd X-Request-ID is replaced by a
    fresh one, and answers carry it once; the proxy's own plain-text errors (backpressure 429, 503, 500, 408) are
    rewritten into the OpenAI error shape, with ±25 % jitter on a Retry-After so rejected clients do not return in
    lockstep."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        set_header(scope, b"x-request-id", request_id(scope).encode())
        rewrite: dict = {}

        async def send_(message):
            if message["type"] == "http.response.start":
                # The app and Serve's proxy both answer with the request's id: one header, not two.
                headers = _once([(k.lower(), v) for k, v in message.get("headers", [])], b"x-request-id")
                message = {**message, "headers": headers}
                ctype = dict(headers).get(b"content-type", b"")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    rewrite["start"], rewrite["headers"] = message, headers
                    return
            elif message["type"] == "http.response.body" and "start" in rewrite:
                if message.get("more_body"):
                    return
                start = rewrite.pop("start")
                status = start["status"]
                text = {429: "too many requests: this deployment's queue is full; retry later",
                        503: "service unavailable: no replica can take the request now; retry later",
                        408: "request timed out in the proxy"}.get(status, "internal error in the proxy")
                body = json_bytes(error_body(status, text))
                headers = [(k, v) for k, v in rewrite["headers"] if k not in (b"content-type", b"content-length")]
                headers = [(k, _jitter(v) if k == b"retry-after" else v) for k, v in headers]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**start, "headers": headers})
                return await send({"type": "http.response.body", "body": body})
            await send(message)

        await self.app(scope, receive, send_)


def _once(headers: list, name: bytes) -> list:
    seen = False
    out = []
    for k, v in headers:
        if k == name:
            if seen:
                continue
            seen = True
        out.append((k, v))
    return out


def _jitter(value: bytes) -> bytes:
    try:
        seconds = float(value)
    except ValueError:
        return value
    return str(max(1, round(seconds * random.uniform(0.75, 1.25)))).encode()


def proxy_middlewares() -> list:
    """For `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=pipelines.serve.proxy:proxy_middlewares` (Serve config YAML)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyMiddleware)]


