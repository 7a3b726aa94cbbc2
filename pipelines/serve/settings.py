"""What one endpoint serves (`ServeSettings`) and how Serve runs it (`DeploymentSettings`).

Both come from `restore serve` flags or from the Serve config's application
`args` (`infra/serve.yaml`: `args.settings`, `args.deployment`); unknown keys fail.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.media.fetch import FetchPolicy
from restore.config import ModelConfig, ReductionConfig


class ServeSettings(BaseModel):
    """What one deployment serves and its limits (`restore serve` flags, the Serve config's `args`)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="'default', a local dir, s3://prefix, or random:ARCH.")
    model_name: str | None = Field(None, description="Model id reported by /v1/models (default: from `model`).")
    reduction: ReductionConfig = Field(default_factory=ReductionConfig, description="Default reduction.")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu' or 'cuda'.")
    dtype: str = Field("auto", description="float32, bfloat16, float16 or auto.")
    batching: Literal["continuous", "static"] = Field(
        "continuous", description="'continuous': one scheduler per replica, requests join and leave the running "
        "batch every decode step; 'static': batches formed within batch_wait_ms run to completion (benchmarks).")
    max_batch_tokens: int = Field(
        8192, ge=1, description="Continuous batching: KV-cache tokens (after reduction, + max_tokens) of all running "
        "requests together; a reduced request costs its reduced size, so reduction admits more at once.")
    max_running: int = Field(32, ge=1, le=1024, description="Continuous batching: requests decoding at once at most.")
    prefill_group: int = Field(8, ge=1, le=256, description="Continuous batching: requests prefilled together at most.")
    max_waiting: int = Field(64, ge=0, description="Requests a replica queues behind its running batch; beyond: 429 "
                             "with a Retry-After from the measured drain time.")
    max_batch_size: int = Field(8, ge=1, le=256, description="Static batching: requests that share one batch at most.")
    batch_wait_ms: float = Field(10.0, ge=0, description="Static batching: how long a batch waits for more requests.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request gives none.")
    max_prompt_tokens: int = Field(
        4096, ge=1, description="Largest prompt (text + visual tokens before reduction) a request may have; "
        "checked before any forward pass (the model's context is checked too).")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body (413 beyond), from "
                                "Content-Length and while reading.")
    request_timeout_s: float = Field(120.0, gt=0, description="Wall-clock limit of one request, queueing included: "
                                     "it is cancelled, its slot freed, the client gets 504 (or an SSE error event).")
    max_images: int = Field(8, ge=1, description="Images (and videos) per request at most.")
    max_questions: int = Field(16, ge=1, description="Questions per /v1/vqa request at most.")
    video_frames: int = Field(8, ge=1, le=64, description="Frames sampled from each video.")
    fetch: FetchPolicy = Field(default_factory=FetchPolicy, description="Where media may come from, and limits.")
    api_key: str | None = Field(None, description="Bearer key every route but health checks requires (None: open).")
    window_s: float = Field(30.0, gt=0, description="Window of the rates and speedup reported to the autoscaler.")
    calibrate: bool = Field(True, description="Time full and reduced prefill at start-up (the autoscaler's cost model).")

    @field_validator("reduction")
    @classmethod
    def _registered(cls, v: ReductionConfig) -> ReductionConfig:
        from restore.plan import validate

        return validate(v)

    @model_validator(mode="after")
    def _defaults_within_limits(self):
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) is over max_tokens ({self.max_tokens})")
        return self

    def model_spec(self) -> ModelConfig:
        """The model reference with its device and dtype ('auto' resolved by ModelConfig)."""
        return ModelConfig(path=self.model, device=self.device, dtype=self.dtype)

    def served_name(self) -> str:
        return self.model_name or self.model.rstrip("/").rsplit("/", 1)[-1]


class DeploymentSettings(BaseModel):
    """Replica count, autoscaling and admission control of the Serve deployment."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="How often replicas report autoscaling stats.")
    look_back_period_s: float = Field(10.0, gt=0)
    target_utilization: float = Field(0.7, gt=0, le=1, description="Share of measured capacity to plan for.")
    drain_s: float = Field(10.0, gt=0, description="Time in which the policy plans to drain queued requests.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica holds at once (running + batching).")
    max_queued_requests: int = Field(64, ge=-1, description="Requests waiting for a replica; beyond: 429.")
    retry_after_s: float = Field(2.0, ge=0, description="Retry-After of 429 responses.")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
