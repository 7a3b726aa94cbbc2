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
from restore.methods.base import ImageTokens, Method, topk_sorted
from restore.rectify.assignment import Assignment


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T


def distinctive_anchors(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (sorted) of the `count` density peaks among rows of `features` (M, d).

    R_i = sum_j C_ij;  delta_i = 1 - max{C_ij : R_j > R_i} (1 for the most central);
    score_i = R_i * delta_i.
    """
    sim = cosine_matrix(features)
    rep = sim.sum(dim=1)
    more_central = rep[None, :] > rep[:, None]
    nearest_central = sim.masked_fill(~more_central, float("-inf")).amax(dim=1)
    delta = torch.where(torch.isinf(nearest_central), torch.ones_like(rep), 1.0 - nearest_central)
    return topk_sorted(rep * delta, count)


def uniform_anchors(num_tokens: int, count: int) -> torch.Tensor:
    return torch.linspace(0, num_tokens - 1, count).round().long()


def merge_into_anchors(features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(M,) index into `anchors` of the anchor each row is most similar to; anchors map to themselves."""
    x = F.normalize(features.float(), dim=-1)
    owner = (x @ x[anchors].T).argmax(dim=1)
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
    local = distinctive_anchors(feats, m) if cfg.anchors == "distinctive" else uniform_anchors(len(leftover), m)
    owner = merge_into_anchors(feats, local)
    return Assignment.absorb(num, kept, leftover[local], leftover, owner)
