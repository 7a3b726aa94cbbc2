"""`LabelJob`: one offline labeling job, validated before any Ray work starts.

A job is read from YAML or JSON (`LabelJob.from_file`) and/or command-line
flags (flags override the file). Field validation catches bad values and
unknown methods at construction, without touching storage; the checks that
do (the input lists files, the questions load, the output is writable, the
model exists) are `pipelines.batch.checks.validate_before_start`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from restore.config import ReductionConfig, RestoreConfig
from restore.prompts import DEFAULT_CAPTION_PROMPTS


class JobConfigError(ValueError):
    """A job that cannot start: the message names the field or URI and the fix."""


def _endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class LabelJob(BaseModel):
    """Caption or answer questions about every image or video under an input, into Parquet shards."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["images", "videos"] = Field(description="What the input holds: 'images' or 'videos'.")
    input: str = Field(
        description="A local folder, a glob, an s3://bucket/prefix, or a manifest (.parquet or .jsonl) with a "
        "'uri' column and optional 'id' and 'question' columns. Folders and globs keep files by extension "
        "(`pipelines.batch.listing.extensions`: the image formats Pillow decodes; videos: mp4 webm mkv avi mov). "
        "A path that exists is literal even with [, * or ? in its name; only a missing path with them is a glob."
    )
    output: str = Field(
        description="A local directory or s3:// prefix receiving part-*.parquet files (a Parquet dataset) and, "
        "under _restore/, the job marker, the summary and Ray Data's checkpoint."
    )
    task: Literal["caption", "vqa"] = Field("caption", description="'caption' (one prompt for every input) or 'vqa'.")
    prompt: str | None = Field(
        None,
        description="Caption prompt (default: 'describe the image .' / 'describe the video .'). For vqa without "
        "questions, the one question asked of every input. Image placeholders are added when the prompt has "
        "none and the processor has no chat template.",
    )
    questions: str | None = Field(
        None,
        description="vqa only: a JSONL file (local or s3://) of {\"question\": ...} lines, each asked of every "
        "input. A manifest's per-row 'question' column is used when this is not set.",
    )
    model: str = Field("default", description="'default', a local model directory, s3://prefix, or random:ARCH.")
    method: str = Field("none", description="Registered reduction method (see `restore methods`).")
    budget: int | float | None = Field(
        None, description="Visual tokens kept per image (per frame for video), or a ratio in (0, 1); None keeps all."
    )
    restore: bool = Field(True, description="Wrap the method with RESTORE; False runs it as its authors did.")
    batch_size: int = Field(8, ge=1, description="Rows per decode batch and per engine.generate call.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per inference actor; 0 runs on CPU.")
    workers: tuple[int, int] = Field(
        (1, 1), description="(min, max) inference actors; Ray Data autoscales the pool between them."
    )
    limit: int | None = Field(
        None, ge=1, description="Label at most N rows in the output (inputs x questions): the first the listing "
        "yields (in order within a manifest, folder or glob; read tasks of several run in parallel). A rerun with a "
        "larger limit labels more."
    )
    frames: int = Field(8, ge=1, description="videos: frames sampled per video (uniformly, or the cap with fps).")
    fps: float | None = Field(
        None, gt=0, description="videos: sample at this rate instead of uniformly (at most `frames` frames)."
    )
    max_pixels: int | None = Field(
        1024 * 1024,
        ge=64,
        description="Decoded images and frames larger than this many pixels are shrunk (aspect kept) on the "
        "CPU decode workers, before they travel to the inference actors. None keeps full size.",
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated at most per answer.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model weights dtype; 'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    shard_size: int = Field(
        256, ge=1, description="Rows a write task gathers before writing a part file (files may hold more)."
    )
    checkpoint_path: str | None = Field(
        None, description="Where Ray Data's checkpoint (ids already written) lives; default <output>/_restore/checkpoint."
    )
    max_task_retries: int = Field(
        8, ge=1, le=64, description="Times a batch whose inference process died is retried (the crash journal runs "
        "its rows one at a time after the first death, so a poison input ends as an error row within this bound)."
    )
    endpoint_url: str | None = Field(
        default_factory=_endpoint_from_env,
        description="S3 endpoint for s3:// inputs and outputs (default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL).",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra fsspec options for s3:// (e.g. {'anon': true})."
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _parse_workers(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",")]
            if len(parts) == 1:
                parts = parts * 2
            try:
                return tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError(f"workers must be 'MIN,MAX' (e.g. 1,4), got {v!r}") from None
        if isinstance(v, int):
            return (v, v)
        return v

    @field_validator("workers")
    @classmethod
    def _workers_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < v[0]:
            raise ValueError(f"workers must satisfy 1 <= min <= max, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LabelJob:
        self.reduction()  # unknown method / bad budget fail here, naming the registered methods
        if self.task == "caption" and self.questions:
            raise ValueError("questions are for task 'vqa'; drop questions or use --task vqa")
        if self.task == "vqa" and self.questions and self.prompt:
            raise ValueError("give either prompt (one question for every input) or questions (a JSONL file), not both")
        return self

    # ------------------------------------------------------------------ derived

    def reduction(self) -> ReductionConfig:
        from restore.plan import validate

        return validate(ReductionConfig(method=self.method, budget=self.budget, restore=RestoreConfig(enabled=self.restore)))

    def default_prompt(self) -> str | None:
        """The prompt used for rows without their own question."""
        if self.prompt is not None:
            return self.prompt
        return DEFAULT_CAPTION_PROMPTS[self.kind] if self.task == "caption" else None

    def output_fingerprint(self) -> dict[str, Any]:
        """Fields that change what an output row says; a resumed run must match them (the listing may grow)."""
        keys = ("kind", "task", "prompt", "questions", "model", "method", "budget", "restore", "frames", "fps",
                "max_pixels", "max_new_tokens")
        return {k: getattr(self, k) for k in keys}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> LabelJob:
        """A job from YAML or JSON; `overrides` that are not None replace the file's values."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise JobConfigError(f"job file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
        except yaml.YAMLError as err:
            raise JobConfigError(f"job file {path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise JobConfigError(f"job file {path} must hold a mapping of fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
