"""What every base VTR method implements (DESIGN §3).

A method is a small object around pure functions: given one image's visual
tokens (features, an importance score, the grid they lie on) and a budget, it
returns which tokens survive. `select` is the method's notion of importance and
is what RESTORE wraps (prune k = round(gamma*n), merge the rest); `reduce` is the
method as its authors ran it and defaults to pruning with `select`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from restore.tokens import Assignment, ImageTokens

Stage = Literal["pre", "llm"]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Method:
    """Base class: subclasses set the class attributes and implement `select`."""

    name: ClassVar[str]
    stage: ClassVar[Stage] = "pre"
    description: ClassVar[str]
    # The position policy of the method's original code, used when RESTORE is off.
    author_positions: ClassVar[Literal["original", "compact"]] = "compact"
    # For in-LLM methods: the first decoder layer that sees the reduced sequence.
    default_layer: ClassVar[int | None] = None
    # What an in-LLM method reads at decoder layer K-1 besides the hidden states; the engine computes
    # each only when a method acting at that layer asks for it (fused SDPA otherwise).
    needs_importance: ClassVar[bool] = False  # the last prompt token's attention row
    needs_layer_keys: ClassVar[bool] = False  # the layer's keys (`ImageTokens.layer_keys`)
    needs_text_attention: ClassVar[bool] = False  # text tokens' attention rows (`ImageTokens.text_attention`)
    # Pre-LLM methods conditioned on the instruction get `ImageTokens.text` (a host copy per sample).
    needs_text: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def uses_text(self, options: BaseModel) -> bool:
        return self.needs_text

    def layers(self, layer: int | None, options: BaseModel) -> list[int]:
        """In-LLM methods: the decoder layers that each see a newly reduced sequence."""
        if self.stage != "llm":
            return [0]
        return [layer or self.default_layer or 1]

    def validate_options(self, options: dict[str, Any]) -> BaseModel:
        try:
            return self.Options(**options)
        except ValidationError as err:
            raise ValueError(f"invalid options for method {self.name!r}: {err}") from None

    def select(self, tokens: ImageTokens, k: int, options: BaseModel) -> torch.Tensor:
        """Indices (sorted, unique, exactly k) of the tokens this method keeps."""
        raise NotImplementedError

    def reduce(self, tokens: ImageTokens, n: int, options: BaseModel) -> Assignment:
        """The method as its authors ran it: n output tokens. Pruning by default."""
        return Assignment.keep(self.select(tokens, n, options), tokens.num_tokens)


def ascending_layers(v: tuple[int, ...]) -> tuple[int, ...]:
    """A staged method's `layers` option, checked: distinct ascending decoder layers >= 1."""
    if not v or any(k < 1 for k in v) or list(v) != sorted(set(v)):
        raise ValueError(f"layers must be distinct ascending decoder layers >= 1, got {list(v)}")
    return v


def require(method: Method, tokens: ImageTokens, field: str) -> torch.Tensor:
    """`tokens.<field>` (an in-LLM signal), or a ValueError when the caller did not provide it."""
    value = getattr(tokens, field)
    if value is None:
        raise ValueError(f"method {method.name!r} needs ImageTokens.{field} (in-LLM: the engine records it at "
                         "layer K-1); none was given")
    return value


def require_importance(method: Method, tokens: ImageTokens) -> torch.Tensor:
    if tokens.importance is None:
        raise ValueError(
            f"method {method.name!r} needs attention scores that this model's adapter does not provide"
        )
    return tokens.importance
