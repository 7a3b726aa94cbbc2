"""Typed configuration, validated at the edge (DESIGN §1, §2).

Every knob of the RESTORE specification is one field here, so each ablation of
the paper is one flag away.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositionPolicy = Literal["original", "median", "compact"]
CalibrationMode = Literal["off", "size", "size+distance"]
AnchorPolicy = Literal["distinctive", "uniform"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestoreConfig(_Strict):
    """RESTORE's rectifications around a base method (DESIGN §2)."""

    enabled: bool = Field(
        True,
        description="Wrap the base method with RESTORE. False runs the base method as its authors did: "
        "its own reduction, compacted positions, no calibration.",
    )
    gamma: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Fraction of the budget kept by the base method (k = round(gamma*n)); the other n-k "
        "slots are anchors that absorb every remaining token. 1.0 merges nothing.",
    )
    c: float = Field(
        2.0,
        gt=1.0,
        description="Constant of the distance term log(c - D(delta)); must exceed max D = 1.",
    )
    positions: PositionPolicy = Field(
        "median",
        description="Positions of reduced tokens: 'median' (kept tokens keep theirs, merged tokens take the "
        "median of their members'), 'original' (every token at its anchor's own position), 'compact' "
        "(renumbered consecutively, as most base methods' code does).",
    )
    calibration: CalibrationMode = Field(
        "size+distance",
        description="Additive attention bias on visual keys: 'off', 'size' (log s), or 'size+distance' "
        "(log s + log(c - D(|p_m - p_j|)) in prefill, log s in decoding).",
    )
    uniform_first_layer: bool = Field(
        True,
        description="In the first decoder layer that sees the reduced sequence, use the uniform size N/n "
        "for every visual token instead of the merged sizes.",
    )
    anchors: AnchorPolicy = Field(
        "distinctive",
        description="How merge anchors are chosen among the tokens the base method left: 'distinctive' "
        "(density peaks, DESIGN §2) or 'uniform' (evenly spaced in token order; an ablation).",
    )


class ReductionConfig(_Strict):
    """Which visual tokens the LLM sees, and how they are rectified.

    The fields are checked here; that `method` is registered and `layer`/`options` fit it is checked
    by `restore.plan.validate` (the plan layer owns the method registry), which every entry point calls.
    """

    method: str = Field(
        "none",
        description="Registered base method name (see `restore methods`); 'none' keeps every token.",
    )
    budget: int | float | None = Field(
        None,
        description="Visual tokens kept per image (per frame for a video span), as an int >= 1, or as a "
        "ratio in (0, 1) of the tokens the image has. None keeps every token.",
    )
    strict_budget: bool = Field(
        False,
        description="Raise an error when an int budget is larger than an image's token count; otherwise "
        "such an image keeps all of its tokens.",
    )
    layer: int | None = Field(
        None,
        ge=1,
        description="For in-LLM methods: the first decoder layer that sees the reduced sequence (K). "
        "None uses the method's default.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Method-specific options, validated by the method's own options model.",
    )
    restore: RestoreConfig = Field(default_factory=RestoreConfig, description="RESTORE's knobs.")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_not_bool(cls, v):
        # pydantic would read true as 1 token: refuse it before that coercion
        if isinstance(v, bool):
            raise ValueError("budget must be an int >= 1, a ratio in (0, 1), or null, not a boolean")
        return v

    @field_validator("budget")
    @classmethod
    def _budget_positive(cls, v: int | float | None) -> int | float | None:
        if v is None:
            return v
        if isinstance(v, int):
            if v <= 0:
                raise ValueError(f"budget must be >= 1 visual token, got {v}")
            return v
        if not 0.0 < v < 1.0:
            if v >= 1.0 and float(v).is_integer():
                return int(v)
            raise ValueError(f"a fractional budget must be a ratio in (0, 1), got {v}")
        return v

    @property
    def reduces(self) -> bool:
        return self.method != "none" and self.budget is not None

    def budget_for(self, num_tokens: int, frames: int = 1) -> int:
        """Visual tokens to keep for a span of `num_tokens` tokens over `frames` frames."""
        if not self.reduces:
            return num_tokens
        if isinstance(self.budget, float):
            return max(1, min(num_tokens, round(self.budget * num_tokens)))
        wanted = self.budget * frames
        if wanted > num_tokens and self.strict_budget:
            raise ValueError(
                f"budget {self.budget} per image is larger than the {num_tokens} visual tokens this input "
                "has (strict_budget=True); lower the budget or use a ratio"
            )
        return min(wanted, num_tokens)


class GenerationConfig(_Strict):
    """Decoding options, as in transformers' GenerationConfig and the OpenAI API."""

    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens to generate at most.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Softmax temperature when sampling.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when sampling.")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens when sampling (0: all).")
    seed: int | None = Field(None, description="Seed for sampling: the request draws from its own generator "
                             "seeded with it, whatever it is batched with; None draws from torch's global generator.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; the text is cut before them.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence tokens up to max_new_tokens "
                             "(as vLLM's ignore_eos: fixed output lengths for load tests and benchmarks).")


class ModelConfig(_Strict):
    """Where a model comes from and how it runs; `device` and `dtype` are resolved here, once."""

    path: str = Field("default", description="'default', a local directory, a hub id in the local cache, s3://, "
                      "or random:ARCH.")
    device: str = Field("cpu", description="torch device, e.g. 'cpu', 'cuda', 'cuda:1', or 'auto' (cuda when "
                        "available).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "auto", description="Weights dtype; 'auto' is bfloat16 on CUDA and float32 on CPU."
    )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)
