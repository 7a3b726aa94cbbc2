"""`vispruner`: VisPruner — CLS-important tokens plus de-duplicated diverse tokens.

Source: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs", ICCV 2025.
Where: pre-LLM, on the vision tower's output tokens.
Score: two parts. Important tokens: the top round(important_ratio * k) by the
attention each patch receives from the vision tower's CLS query
(`tokens.importance`). Diverse tokens: from the remaining tokens, duplicates are
removed in rounds until the rest of the budget remains; in each round every
token's similarity to its nearest remaining token is computed (cosine on vision
keys when the adapter has them, else on features) and the most similar tokens
are dropped, a token being dropped only while its nearest neighbour survives the
round (of a mutually-nearest pair, the one with lower CLS attention goes).
Defaults: important_ratio = 0.5; each round drops drop_fraction = 0.5 of the
tokens still in excess (at least one), so a 576-token image needs ~10 rounds.
Positions of the original code: 'compact' (it rebuilds the visual sequence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method, require_importance
from restore.tokens import ImageTokens, topk_sorted


class VisPrunerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    important_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the budget kept by CLS attention; the rest are diverse tokens."
    )
    drop_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Share of the excess tokens removed per de-duplication round (at least one); smaller is "
        "closer to removing one token at a time, and slower.",
    )


def _order_rank(scores: torch.Tensor) -> torch.Tensor:
    """(M,) rank of each score, 0 = highest; ties ranked by lower index first."""
    order = torch.argsort(scores, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def deduplicate(x: torch.Tensor, priority: torch.Tensor, target: int, drop_fraction: float = 0.5) -> torch.Tensor:
    """Indices (sorted) of `target` rows of x (M, d) left after dropping near-duplicates in rounds.

    priority: (M,) importance; within a mutually-nearest pair the lower-priority row is dropped.
    """
    alive = torch.arange(x.shape[0], device=x.device)
    if target >= alive.numel():
        return alive.cpu()
    x = F.normalize(x.detach().float(), dim=-1)
    keep_rank = _order_rank(priority.detach().float().to(x.device))  # 0 = most worth keeping
    while alive.numel() > target:
        excess = alive.numel() - target
        xa = x[alive]
        sim = xa @ xa.T
        sim.fill_diagonal_(float("-inf"))
        nearest = sim.argmax(dim=1)  # (A,) local index of each token's most similar other token
        best = sim.gather(1, nearest[:, None]).squeeze(1)
        local = torch.arange(alive.numel(), device=x.device)
        mutual = nearest[nearest] == local
        rank = keep_rank[alive]
        # Dropping both members of a mutual pair would lose what they share; the better-ranked one stays.
        protected = mutual & (rank < rank[nearest])
        candidates = torch.nonzero(~protected).flatten()
        r = min(excess, max(1, math.ceil(excess * drop_fraction)), candidates.numel())
        # Most similar first; among equals drop the least important (highest rank) first.
        by_rank = candidates[torch.argsort(rank[candidates], descending=True, stable=True)]
        by_sim = by_rank[torch.argsort(best[by_rank], descending=True, stable=True)]
        dropped = torch.zeros(alive.numel(), dtype=torch.bool, device=x.device)
        dropped[by_sim[:r]] = True
        alive = alive[~dropped]
    return alive.cpu()


@register
class VisPruner(Method):
    name = "vispruner"
    stage = "pre"
    description = "CLS-attention important tokens + diverse tokens left after removing duplicates"
    author_positions = "compact"
    needs_importance = True
    Options = VisPrunerOptions

    def select(self, tokens: ImageTokens, k: int, options: VisPrunerOptions) -> torch.Tensor:
        importance = require_importance(self, tokens).detach().float().cpu()
        num = tokens.num_tokens
        if k >= num:
            return torch.arange(num)
        k_important = min(k, max(0, round(options.important_ratio * k)))
        important = topk_sorted(importance, k_important)
        if k_important == k:
            return important
        rest_mask = torch.ones(num, dtype=torch.bool)
        rest_mask[important] = False
        rest = torch.nonzero(rest_mask).flatten()
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        diverse = deduplicate(
            sim_source[rest.to(sim_source.device)], importance[rest], k - k_important, options.drop_fraction
        )
        return torch.sort(torch.cat([important, rest[diverse]])).values
