"""Request and response bodies of the online API: OpenAI chat completions, and /v1/caption, /v1/vqa.

Bodies are validated by pydantic before any work; unknown top-level fields are
refused (nothing a client asks for is silently ignored), and `restore` is a
`ReductionConfig` with its own strict schema.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from restore.config import ReductionConfig

if TYPE_CHECKING:
    from restore.request import Stats


def _unicode(v: str) -> str:
    """Text that is valid Unicode: a lone surrogate (JSON '\\udc00') is refused here, naming the field."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {err.start}); send UTF-8 text") \
            from None
    return v


Text = Annotated[str, AfterValidator(_unicode)]

INT64 = 2**63


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx the app produces: the OpenAI error shape."""

    error: ErrorDetail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _registered(v: ReductionConfig | None) -> ReductionConfig | None:
    """A per-request reduction whose method is registered and whose layer/options fit it."""
    from restore.plan import validate

    return None if v is None else validate(v)


class MediaURL(_Strict):
    url: Text = Field(..., min_length=1, description="data: URI, s3:// or an allowed http(s) URL.")
    detail: Text | None = Field(None, description="Accepted for compatibility; the model's processor sets resolution.")


class ContentPart(_Strict):
    type: Literal["text", "image_url", "video_url"]
    text: Text | None = None
    image_url: MediaURL | None = None
    video_url: MediaURL | None = None

    @model_validator(mode="after")
    def _matches_type(self):
        if getattr(self, self.type) is None:
            raise ValueError(f"a {self.type!r} part needs a {self.type!r} field")
        return self


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text | list[ContentPart]
    name: Text | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: Text | None = Field(None, description="The served model id (GET /v1/models) or none.")
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1, description="Sampling seed (a 64-bit integer).")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens tokens, past end-of-sequence.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    restore: ReductionConfig | None = Field(None, description="Per-request reduction (ReductionConfig schema).")

    check_restore = field_validator("restore")(_registered)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and (len(v) > 4 or any(not s for s in v)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return v


class MediaInput(_Strict):
    """One image or video for /v1/caption and /v1/vqa: base64 bytes or a reference."""

    image: Text | None = Field(None, description="Base64 of the image bytes, or a data:/s3:// /allowed http(s) URI.")
    video: Text | None = Field(None, description="Base64 of the video bytes, or a data:/s3:// /allowed http(s) URI.")
    id: Text | None = Field(None, description="Caller's id, echoed in the rows (default: a generated one).")

    @model_validator(mode="after")
    def _one(self):
        if (self.image is None) == (self.video is None):
            raise ValueError("give exactly one of 'image' or 'video'")
        return self


class CaptionRequest(MediaInput):
    prompt: Text | None = Field(None, description="Caption prompt (default: the batch job's).")
    max_tokens: int | None = Field(None, ge=1)
    restore: ReductionConfig | None = None

    check_restore = field_validator("restore")(_registered)


class VQARequest(MediaInput):
    # The schema says what the check below refuses (a question with no visible character), so a client
    # generated from the OpenAPI document never sends one.
    questions: list[Annotated[str, StringConstraints(pattern=r"\S"), AfterValidator(_unicode)]] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    restore: ReductionConfig | None = None

    check_restore = field_validator("restore")(_registered)

    @field_validator("questions")
    @classmethod
    def _non_empty(cls, v):
        if any(not q.strip() for q in v):
            raise ValueError("questions must be non-empty strings")
        return v


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def restore_stats(stats: Stats) -> dict:
    """The `restore` object of a response: what reduction did to this request."""
    speedup = stats.prefill_speedup_est
    return {
        "method": stats.method, "budget": stats.budget, "restore": stats.restore,
        "visual_tokens": stats.visual_tokens, "kept_tokens": stats.kept_tokens, "prompt_tokens": stats.prompt_tokens,
        "prefill_ms": round(stats.prefill_ms, 3), "decode_ms": round(stats.decode_ms, 3),
        # Decoder FLOPs with every visual token over those of this prefill (Engine's full_prefill_ms_est).
        "prefill_speedup_est": round(speedup, 3) if speedup is not None else None,
        "batch_size": stats.batch_size,
    }


def finish_reason(result, max_tokens: int) -> str:
    return "length" if result.stats.generated_tokens >= max_tokens else "stop"


def chat_response(model: str, result, max_tokens: int) -> dict:
    message = {"role": "assistant", "content": result.text}
    return {
        "id": completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result, max_tokens),
                     "logprobs": None}],
        "usage": usage(result),
        "restore": restore_stats(result.stats),
    }


def usage(result) -> dict:
    s = result.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def chunk(cid: str, model: str, created: int, delta: dict, finish: str | None = None, **extra) -> dict:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
