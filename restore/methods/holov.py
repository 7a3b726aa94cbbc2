"""`holov`: HoloV — spread the budget over spatial crops, then keep each crop's best tokens.

Source: Zou et al., "Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting
Visual Holistic Context Retention" (HoloV), NeurIPS 2025.
Where: pre-LLM, on the vision tower's output tokens.
Score: each frame of the (T, H, W) grid (one row when there is no grid) is cut
into crops x crops spatial crops. A crop's share of the budget mixes its CLS
attention mass and its semantic spread:
    share_c = (1 - w) * A_c / sum(A) + w * V_c / sum(V),
A_c = summed CLS attention (`tokens.importance`) of the crop's tokens, V_c = the
variance over the crop's tokens of their cosine similarity to the crop's mean
(vision keys when the adapter has them, else features), w = variance_weight.
Integer allocations follow by largest remainder, each capped by the crop's size
and summing to exactly k. Within a crop the top tokens by
    importance / max(importance) + lam * (1 - cos(x_i, crop mean)) / max(.)
are kept, lam = dissimilarity_weight.
Defaults: crops = 2 (2x2 per frame), variance_weight = 0.5,
dissimilarity_weight = 0 (rank by CLS attention within a crop).
Positions of the original code: 'compact' (it rebuilds the visual sequence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method, require_importance
from restore.tokens import ImageTokens


class HoloVOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    crops: int = Field(2, ge=1, description="Crops per side of each frame: crops x crops spatial crops.")
    variance_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of a crop's similarity variance against its CLS attention mass in its budget share.",
    )
    dissimilarity_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of a token's dissimilarity to its crop mean, added to its normalised CLS "
        "attention when ranking tokens within a crop.",
    )


def crop_ids(tokens: ImageTokens, crops: int) -> torch.Tensor:
    """(N,) crop id of each token: frame-major, then row-major crops within a frame."""
    t, h, w = tokens.grid if tokens.grid is not None else (1, 1, tokens.num_tokens)
    rows, cols = min(crops, h), min(crops, w)
    coords = tokens.grid_coords().long()
    crop_row = coords[:, 1] * rows // h
    crop_col = coords[:, 2] * cols // w
    return coords[:, 0] * (rows * cols) + crop_row * cols + crop_col


def allocate(shares: list[float], caps: list[int], k: int) -> list[int]:
    """Largest-remainder split of k over crops by share, each capped by its size; sums to k."""
    alloc = [0] * len(caps)
    remaining = k
    while remaining > 0:
        open_ = [c for c in range(len(caps)) if alloc[c] < caps[c]]
        weight = [max(shares[c], 0.0) for c in open_]
        if sum(weight) <= 0.0:  # no share left among open crops: fill by free room instead
            weight = [float(caps[c] - alloc[c]) for c in open_]
        total = sum(weight)
        want = [remaining * wt / total for wt in weight]
        base = [min(math.floor(x), caps[c] - alloc[c]) for x, c in zip(want, open_)]
        extra = remaining - sum(base)
        # Hand the rounding leftovers to the largest fractional parts (ties: lower crop) with room left.
        order = sorted(range(len(open_)), key=lambda i: (-(want[i] - math.floor(want[i])), i))
        for i in order:
            if extra == 0:
                break
            if base[i] < caps[open_[i]] - alloc[open_[i]]:
                base[i] += 1
                extra -= 1
        for i, c in enumerate(open_):
            alloc[c] += base[i]
        remaining = k - sum(alloc)
    return alloc


def holov_select(
    importance: torch.Tensor,
    sim_source: torch.Tensor,
    crop: torch.Tensor,
    k: int,
    variance_weight: float,
    dissimilarity_weight: float,
) -> torch.Tensor:
    num = importance.shape[0]
    device = sim_source.device
    crop = crop.to(device)
    imp = importance.detach().float().to(device)
    num_crops = int(crop.max()) + 1
    size = torch.bincount(crop, minlength=num_crops)
    x = F.normalize(sim_source.detach().float(), dim=-1)
    mean = torch.zeros(num_crops, x.shape[1], device=device).index_add_(0, crop, x) / size.clamp_min(1)[:, None]
    sim = (x * F.normalize(mean, dim=-1)[crop]).sum(-1)  # (N,) cosine to the crop mean
    first = torch.zeros(num_crops, device=device).index_add_(0, crop, sim) / size.clamp_min(1)
    second = torch.zeros(num_crops, device=device).index_add_(0, crop, sim * sim) / size.clamp_min(1)
    variance = (second - first * first).clamp_min(0.0)
    mass = torch.zeros(num_crops, device=device).index_add_(0, crop, imp.clamp_min(0.0))
    # Crops with no mass (or no spread) anywhere fall back to their share of the tokens.
    by_size = size.float() / num
    mass_share = mass / mass.sum() if mass.sum() > 0 else by_size
    var_share = variance / variance.sum() if variance.sum() > 0 else by_size
    shares = (1.0 - variance_weight) * mass_share + variance_weight * var_share
    alloc = torch.tensor(allocate(shares.tolist(), size.tolist(), k), device=device)

    score = imp / imp.abs().max().clamp_min(1e-12)
    if dissimilarity_weight > 0:
        dissim = 1.0 - sim
        score = score + dissimilarity_weight * dissim / dissim.max().clamp_min(1e-12)
    # Group by crop with each crop's tokens best-first, then keep the first alloc[c] of crop c.
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(crop[order], stable=True)]
    start = torch.cumsum(size, 0) - size
    rank = torch.arange(num, device=device) - start[crop[order]]
    kept = order[rank < alloc[crop[order]]]
    return torch.sort(kept).values.cpu()


@register
class HoloV(Method):
    name = "holov"
    stage = "pre"
    description = "budget spread over spatial crops by CLS attention and similarity variance"
    author_positions = "compact"
    needs_importance = True
    Options = HoloVOptions

    def select(self, tokens: ImageTokens, k: int, options: HoloVOptions) -> torch.Tensor:
        importance = require_importance(self, tokens)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return holov_select(
            importance, sim_source, crop_ids(tokens, options.crops), k,
            options.variance_weight, options.dissimilarity_weight,
        )
