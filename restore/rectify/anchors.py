"""Prune-then-merge (DESIGN §2 steps 1–2): distinctive anchor selection and merging.

The base method keeps k = round(gamma*n) tokens; every other token is merged into
one of n-k anchors, so nothing is dropped and sizes sum to N. Anchors are density
peaks among the leftover tokens: central (high summed cosine similarity R) yet far
from any more central token (distinctiveness delta).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore.config import RestoreConfig
from restore.methods.base import Method
from restore.tokens import Assignment, ImageTokens, topk_sorted


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T


def distinctive_anchors(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (sorted) of the `count` density peaks among rows of `features` (M, d)."""
    return density_peaks(cosine_matrix(features), count)


def density_peaks(sim: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (sorted) of the `count` density peaks of a cosine matrix `sim` (M, M).

    R_i = sum_j C_ij;  delta_i = 1 - max{C_ij : R_j > R_i} (1 for the most central);
    score_i = R_i * delta_i.
    """
    rep = sim.sum(dim=1)
    more_central = rep[None, :] > rep[:, None]
    nearest_central = sim.masked_fill(~more_central, float("-inf")).amax(dim=1)
    delta = torch.where(torch.isinf(nearest_central), torch.ones_like(rep), 1.0 - nearest_central)
    return topk_sorted(rep * delta, count)


def uniform_anchors(num_tokens: int, count: int) -> torch.Tensor:
    return torch.linspace(0, num_tokens - 1, count).round().long()


def nearest_anchor(to_anchors: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(M,) index into `anchors` of the anchor each row is most similar to, from the (M, A) cosine similarities
    of every row to the anchors; anchors map to themselves."""
    owner = to_anchors.argmax(dim=1)
    owner[anchors] = torch.arange(anchors.numel())
    return owner


def restore_assignment(
    tokens: ImageTokens, n: int, method: Method, options, cfg: RestoreConfig
) -> Assignment:
    """RESTORE around `method`: n output slots, k kept by the method, n-k merged anchors."""
    num = tokens.num_tokens
    if n >= num:
        return Assignment.identity(num)
    k = min(n, max(0, round(cfg.gamma * n)))
    kept = method.select(tokens, k, options) if k > 0 else torch.empty(0, dtype=torch.long)
    if kept.numel() != k:
        raise RuntimeError(f"method {method.name!r} kept {kept.numel()} tokens, asked for {k}")
    leftover_mask = torch.ones(num, dtype=torch.bool)
    leftover_mask[kept] = False
    leftover = torch.nonzero(leftover_mask).flatten()
    m = n - k
    if m == 0:
        return Assignment.keep(kept, num)
    feats = tokens.features[leftover]
    if cfg.anchors == "distinctive":
        sim = cosine_matrix(feats)  # one matrix serves both the peaks and the merge
        local = density_peaks(sim, m)
        to_anchors = sim[:, local]
    else:
        local = uniform_anchors(len(leftover), m)
        x = F.normalize(feats.float(), dim=-1)
        to_anchors = x @ x[local].T
    owner = nearest_anchor(to_anchors, local)
    return Assignment.absorb(num, kept, leftover[local], leftover, owner)
