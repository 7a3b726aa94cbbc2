"""`temporal`: merge near-duplicate tokens across frames, then a spatial method fills the budget.

Source idea: HoliTom (Shao et al., "HoliTom: Holistic Token Merging for Fast
Video Large Language Models", 2025) and EVS (efficient video sampling: drop
patches that repeat the previous frame). Implemented here from the idea, not
from either code base.
Where: pre-LLM, on video spans (a (T, H, W) grid with T > 1). Images, spans
without a grid and single-frame spans go straight to the spatial method, so the
method degenerates to it there (a LLaVA clip given as images is T single-frame
spans).
Score: cosine similarity of each token with the token at the same (h, w) in the
previous frame (vision keys when the adapter gives them, else features). A pair
above `threshold` is an edge; applying the edges chains tokens into temporal
runs (a token joins its predecessor's run), each run one merged token whose
size is the run length and whose feature is the runs' mean. When the runs are
still more than the budget n, the spatial method's `reduce` brings them to
exactly n (it sees the run means, importance summed per run, run-mean keys, no
grid); the two steps compose into one `Assignment` over the original tokens.
When the edges would leave fewer than n runs, only the N - n most similar edges
are applied (most similar first), so the result is exactly n slots and nothing
is dropped. `select(k)` (what RESTORE wraps) forms the runs the same way for k
and returns the first token of each run the spatial method's `select` keeps.
Defaults: threshold = 0.9, spatial = "divprune" (any registered pre-LLM method
except `none` and `temporal`), spatial_options = {} (the spatial method's own).
Positions of the original code: 'compact' (the reduced sequence is renumbered).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from restore.methods import get_method, register
from restore.methods.base import Method
from restore.tokens import Assignment, ImageTokens


class TemporalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    threshold: float = Field(
        0.9,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity above which a token joins the run of the token at its place in the "
        "previous frame.",
    )
    spatial: str = Field(
        "divprune",
        description="Registered pre-LLM method that reduces the temporal runs to the budget (and that "
        "handles images and single-frame spans on its own).",
    )
    spatial_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the spatial method, validated by that method."
    )

    @model_validator(mode="after")
    def _spatial_known(self) -> TemporalOptions:
        spatial_method(self)  # raises with the reason
        return self


def spatial_method(options: TemporalOptions) -> tuple[Method, BaseModel]:
    """The spatial method named by `options` and its validated options."""
    method = get_method(options.spatial)
    if method.name in ("temporal", "none") or method.stage != "pre":
        raise ValueError(
            f"temporal: spatial method must be a registered pre-LLM reduction method other than 'none' and "
            f"'temporal', got {options.spatial!r} ({method.stage})"
        )
    return method, method.validate_options(options.spatial_options)


def neighbour_similarity(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(T-1, H*W) cosine similarity of each token with the one at its place in the previous frame."""
    t, h, w = grid
    xn = F.normalize(x.detach().float(), dim=-1).view(t, h * w, -1)
    return (xn[1:] * xn[:-1]).sum(-1).cpu()


def temporal_runs(sim: torch.Tensor, threshold: float, min_runs: int) -> Assignment:
    """Runs of same-place tokens linked by edges of similarity > threshold, at least `min_runs` of them.

    sim: (T-1, P) similarity of token (t+1, p) with (t, p). Each applied edge removes one run, so at
    most N - min_runs edges are applied, the most similar first (ties to the lower token index).
    Returns an Assignment with one slot per run, slots in order of the runs' first tokens, rep = the
    first token of each run.
    """
    frames_minus_one, places = sim.shape
    num = (frames_minus_one + 1) * places
    flat = sim.flatten()
    candidates = torch.nonzero(flat > threshold).flatten()
    limit = max(0, num - min_runs)
    if candidates.numel() > limit:
        order = torch.argsort(flat[candidates], descending=True, stable=True)
        candidates = candidates[order[:limit]]
    edge = torch.zeros(frames_minus_one * places, dtype=torch.bool)
    edge[candidates] = True
    edge = edge.view(frames_minus_one, places)
    root = torch.arange(num).view(frames_minus_one + 1, places)
    for t in range(1, frames_minus_one + 1):  # chaining: a token inherits its predecessor's root
        root[t] = torch.where(edge[t - 1], root[t - 1], root[t])
    rep, slot = torch.unique(root.flatten(), sorted=True, return_inverse=True)
    return Assignment(slot=slot, rep=rep)


def compose(inner: Assignment, outer: Assignment) -> Assignment:
    """`outer` (over inner's slots) after `inner` (over the original tokens), as one Assignment."""
    live = inner.slot >= 0
    slot = torch.full_like(inner.slot, -1)
    slot[live] = outer.slot[inner.slot[live]]
    # A token's merge weight is its own times its run's (two merges in one).
    weights = inner.weights
    if outer.weights is not None:
        carried = outer.weights[inner.slot.clamp(min=0)]
        weights = carried if weights is None else weights * carried
    return Assignment(slot=slot, rep=inner.rep[outer.rep], weights=weights)


def run_tokens(tokens: ImageTokens, runs: Assignment) -> ImageTokens:
    """The runs as tokens: mean features and keys, importance summed per run, no grid."""
    return ImageTokens(
        features=runs.merge(tokens.features),
        importance=None if tokens.importance is None else runs.sizes(tokens.importance.detach().float().cpu()),
        keys=None if tokens.keys is None else runs.merge(tokens.keys),
        grid=None,
        text=tokens.text,
    )


@register
class Temporal(Method):
    name = "temporal"
    stage = "pre"
    description = "merge same-place near-duplicates across video frames, then a spatial method (divprune)"
    author_positions = "compact"
    Options = TemporalOptions

    def uses_text(self, options: TemporalOptions) -> bool:
        spatial, spatial_options = spatial_method(options)
        return spatial.uses_text(spatial_options)

    @staticmethod
    def _is_video(tokens: ImageTokens) -> bool:
        return tokens.grid is not None and tokens.grid[0] > 1

    def _runs(self, tokens: ImageTokens, budget: int, options: TemporalOptions) -> Assignment:
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return temporal_runs(neighbour_similarity(sim_source, tokens.grid), options.threshold, budget)

    def select(self, tokens: ImageTokens, k: int, options: TemporalOptions) -> torch.Tensor:
        spatial, spatial_options = spatial_method(options)
        if not self._is_video(tokens):
            return spatial.select(tokens, k, spatial_options)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        if k <= 0:
            return torch.empty(0, dtype=torch.long)
        runs = self._runs(tokens, k, options)
        if runs.num_slots == k:
            return runs.rep
        chosen = spatial.select(run_tokens(tokens, runs), k, spatial_options)
        return torch.sort(runs.rep[chosen]).values

    def reduce(self, tokens: ImageTokens, n: int, options: TemporalOptions) -> Assignment:
        spatial, spatial_options = spatial_method(options)
        if not self._is_video(tokens):
            return spatial.reduce(tokens, n, spatial_options)
        if n >= tokens.num_tokens:
            return Assignment.identity(tokens.num_tokens)
        if n < 1:
            raise ValueError(f"temporal needs a budget of at least one token, got {n}")
        runs = self._runs(tokens, n, options)
        if runs.num_slots == n:
            return runs
        return compose(runs, spatial.reduce(run_tokens(tokens, runs), n, spatial_options))
