"""`sparsevlm`: SparseVLM (single stage) — keep the tokens the prompt rates highest, recycle the rest.

Source: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient
Vision-Language Model Inference", ICML 2025.
Where: in-LLM; decoder layers 0..K-1 see every visual token, layer K (default
K = 2) and later see the reduced set. The paper sparsifies progressively at
several layers with a rank-based adaptive ratio; this is the single-stage
version at layer K with the budget from the reduction config.
Score: the paper rates visual tokens by the attention they receive from "text
raters" (the prompt tokens most relevant to the image), averaged over raters
and heads. The engine records one query row, so the raters are approximated by
the last prompt token: `tokens.importance` is its attention to each visual token
at layer K-1, averaged over heads (as for FastV). `select(k)` is the top-k by
that score (what RESTORE wraps).
`reduce` is the method as its authors ran it, with token recycling: of n output
tokens, c = min(round(recycle_ratio * n), n - 1) are recycled tokens and n - c
are the top-scoring tokens. The deleted tokens (all but those n - c) are
clustered into c groups: the c deleted tokens with the highest scores are the
centres, every other deleted token joins the centre it is most similar to
(cosine on the hidden states), and each group is merged into one token (the
size-weighted mean of its members). Nothing is dropped when c > 0 (sizes sum to
N); the paper recycles only the best-rated deleted tokens and clusters them with
density-peak k-NN clustering, which this centre-by-score grouping approximates.
Slots are in token order; a recycled slot is represented by its centre.
Defaults: K = 2, recycle_ratio = 0.1.
Positions of the original code: 'original' (it gathers the kept tokens' position
ids inside the decoder rather than renumbering).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import require_importance
from restore.methods.fastv import FastV
from restore.tokens import Assignment, ImageTokens, budget_share, topk_sorted


class SparseVLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    recycle_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of the budget given to recycled tokens that merge the deleted ones "
        "(round(recycle_ratio * n), at most n - 1); 0 is plain pruning.",
    )


def sparsevlm_assignment(importance: torch.Tensor, sim_source: torch.Tensor, n: int, ratio: float) -> Assignment:
    """n slots in token order: the n - c top-scoring tokens and c recycled groups of the deleted ones."""
    num = importance.shape[0]
    if n >= num:
        return Assignment.identity(num)
    imp = importance.detach().float().cpu()
    c = budget_share(n, ratio)
    kept = topk_sorted(imp, n - c)
    if c == 0:
        return Assignment.keep(kept, num)
    deleted_mask = torch.ones(num, dtype=torch.bool)
    deleted_mask[kept] = False
    deleted = torch.nonzero(deleted_mask).flatten()  # (M,), M = N - n + c > c
    centre_local = topk_sorted(imp[deleted], c)
    x = F.normalize(sim_source.detach().float(), dim=-1)[deleted.to(sim_source.device)]
    owner = (x @ x[centre_local.to(x.device)].T).argmax(dim=1).cpu()  # (M,) index into centres
    owner[centre_local] = torch.arange(c)
    return Assignment.absorb(num, kept, deleted[centre_local], deleted, owner)


@register
class SparseVLM(FastV):
    """FastV's top-k selection by the last prompt token's attention, plus token recycling in `reduce`."""

    name = "sparsevlm"
    description = "in-LLM: keep the tokens the prompt (last token as rater) attends to most; recycle the rest"
    author_positions = "original"
    default_layer = 2
    needs_importance = True
    Options = SparseVLMOptions

    def reduce(self, tokens: ImageTokens, n: int, options: SparseVLMOptions) -> Assignment:
        importance = require_importance(self, tokens)
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return sparsevlm_assignment(importance, sim_source, n, options.recycle_ratio)
