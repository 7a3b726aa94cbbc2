"""What every base VTR method implements (DESIGN §3).

A method is a small object around pure functions: given one image's visual
tokens (features, an importance score, the grid they lie on) and a budget, it
returns which tokens survive. `select` is the method's notion of importance and
is what RESTORE wraps (prune k = round(gamma*n), merge the rest); `reduce` is the
method as its authors ran it and defaults to pruning with `select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from restore.rectify.assignment import Assignment

Stage = Literal["pre", "llm"]


@dataclass(frozen=True)
class ImageTokens:
    """One image's (or video span's) visual tokens, as a method sees them.

    features:   (N, d) features the LLM sees: projector outputs before the LLM,
                hidden states for in-LLM methods.
    importance: (N,) attention mass each token receives from the vision tower's
                CLS query (pre-LLM) or from the last prompt token at layer K-1
                (in-LLM); None when the model has neither.
    keys:       (N, dk) vision-tower keys or features for methods that measure
                similarity there; None when not available.
    grid:       (T, H, W) when the tokens are a row-major T x H x W grid, else None.
    """

    features: torch.Tensor
    importance: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    grid: tuple[int, int, int] | None = None

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]

    def grid_coords(self) -> torch.Tensor:
        """(N, 3) float (t, row, col) of each token; a single row when there is no grid."""
        n = self.num_tokens
        if self.grid is None:
            return torch.stack([torch.zeros(n), torch.zeros(n), torch.arange(n, dtype=torch.float32)], dim=1)
        t, h, w = self.grid
        idx = torch.arange(n)
        return torch.stack([idx // (h * w), (idx // w) % h, idx % w], dim=1).float()


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
    needs_importance: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

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


def require_importance(method: Method, tokens: ImageTokens) -> torch.Tensor:
    if tokens.importance is None:
        raise ValueError(
            f"method {method.name!r} needs attention scores that this model's adapter does not provide"
        )
    return tokens.importance


def budget_share(n: int, ratio: float) -> int:
    """Slots of a budget of n given to a method's merged tokens: round(n * ratio), at least 0, fewer than n."""
    return min(max(round(n * ratio), 0), n - 1)


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ascending by index; ties broken by lower index."""
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values
