"""`sparsevlm`: SparseVLM — text raters score the visual tokens, pruned in stages; the best pruned are recycled.

Source: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient
Vision-Language Model Inference", ICML 2025.
Where: in-LLM, progressively at several decoder layers (default 2, 6, 15 of a
32-layer decoder, moved to the same relative depth in other models): shallow
layers see every token, each later stage a smaller set; the budget n fixes the
tokens after the last stage and earlier stages shrink geometrically (as for
PyramidDrop).
Score: at each stage, the engine records at layer K-1 the head-averaged attention
P (T x N) of the T text tokens that follow the image on its N visual tokens
(`tokens.text_attention`; T rows, never the full matrix). Text raters are the
text tokens relevant to the image: those whose mean attention on the visual
tokens, R_i = mean_j P_ij, is at least the mean of R over all text tokens. A
visual token's score is its attention from the raters, averaged over raters,
    s_j = mean_{i in raters} P_ij.
With no text after the image every token scores alike (ties keep the earlier
tokens). `select(k)` is the top-k by s (what RESTORE wraps).
`reduce` is the method as its authors ran it, with token recycling: of a stage's
n output tokens, c = budget_share(n, recycle_ratio) are recycled tokens and n - c
the top-scoring ones. Of the deleted tokens, the best-rated
max(c, ceil(recycle_share * deleted)) are recycled and the rest dropped. The
recycled ones are clustered by density-peak k-NN clustering on the hidden states
(Euclidean d): local density rho_i = exp(-mean of d^2 to its knn nearest
neighbours), delta_i = distance to the nearest denser token (the largest
distance for the densest), the c tokens with the largest rho * delta are the
centres, every recycled token joins its nearest centre, and each cluster becomes
one token (the size-weighted mean of its members, represented by its centre).
What differs from the paper, and why: the paper sets each layer's deletion count
from the rank of the raters' attention matrix (an adaptive ratio); here the
stage sizes come from the budget (exact final count n, geometric in between),
because the engine promises exactly n tokens per image and the continuous-batching
scheduler counts each request's KV cache from its budget before the prefill. The
attention is averaged over heads, and raters are chosen per image among the text
tokens after it (text before an image cannot attend to it).
Defaults: layers (2, 6, 15), recycle_ratio = 0.1; recycle_share = 0.3 and knn = 5
are this implementation's choices (the paper's values could not be checked here).
Positions of the original code: 'original' (it gathers the kept tokens' position
ids inside the decoder rather than renumbering).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from restore.methods import register
from restore.methods.base import Method, ascending_layers, require
from restore.tokens import Assignment, ImageTokens, budget_share, topk_sorted


class SparseVLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: tuple[int, ...] = Field(
        (2, 6, 15), description="Decoder layers that start each new sparsification stage (ascending, >= 1)."
    )
    recycle_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Share of each stage's budget given to recycled tokens (round(recycle_ratio * n), at most "
        "n - 1); 0 is plain pruning.",
    )
    recycle_share: float = Field(
        0.3, gt=0.0, le=1.0, description="Share of the deleted tokens, best-rated first, that are recycled; the "
        "rest are dropped."
    )
    knn: int = Field(5, ge=1, description="Neighbours that set each recycled token's density in the clustering.")

    _ascending = field_validator("layers")(ascending_layers)


def rater_scores(text_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) bool raters and (N,) visual-token scores from the text tokens' attention P (T, N)."""
    p = text_attention.detach().float()
    if p.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(p.shape[1])
    relevance = p.mean(dim=1)  # R_i: how much text token i looks at the image
    raters = relevance >= relevance.mean()
    return raters, p[raters].mean(dim=0)


def density_peak_clusters(x: torch.Tensor, count: int, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN on rows of x (M, d): (count,) sorted centre indices and (M,) index into them of each row's
    cluster (its nearest centre)."""
    x = x.detach().float()
    dist = torch.cdist(x, x)  # (M, M)
    m = x.shape[0]
    near = dist.topk(min(knn + 1, m), largest=False).values[:, 1:]  # drop the zero self-distance
    density = torch.exp(-(near**2).mean(dim=1)) if near.numel() else torch.ones(m)
    denser = density[None, :] > density[:, None]
    delta = dist.masked_fill(~denser, float("inf")).amin(dim=1)
    delta = torch.where(torch.isinf(delta), dist.amax(dim=1), delta)
    centres = topk_sorted(density * delta, count)
    owner = dist[:, centres].argmin(dim=1)
    owner[centres] = torch.arange(count)
    return centres, owner


def sparsevlm_assignment(scores: torch.Tensor, features: torch.Tensor, n: int, options: SparseVLMOptions) -> Assignment:
    """n slots in token order: the n - c top-scoring tokens and c clusters of the best-rated deleted ones."""
    num = scores.shape[0]
    if n >= num:
        return Assignment.identity(num)
    c = budget_share(n, options.recycle_ratio)
    kept = topk_sorted(scores, n - c)
    if c == 0:
        return Assignment.keep(kept, num)
    deleted_mask = torch.ones(num, dtype=torch.bool)
    deleted_mask[kept] = False
    deleted = torch.nonzero(deleted_mask).flatten()  # (M,), M = N - n + c > c
    size = min(deleted.numel(), max(c, math.ceil(options.recycle_share * deleted.numel())))
    recycled = deleted[topk_sorted(scores[deleted], size)]
    centres, owner = density_peak_clusters(features[recycled], c, options.knn)
    return Assignment.absorb(num, kept, recycled[centres], recycled, owner)


@register
class SparseVLM(Method):
    name = "sparsevlm"
    stage = "llm"
    description = "in-LLM, staged: text raters score the visual tokens; the best pruned ones are recycled by clustering"
    author_positions = "original"
    default_layer = 2
    needs_text_attention = True
    Options = SparseVLMOptions

    def layers(self, layer: int | None, options: SparseVLMOptions) -> list[int]:
        if layer is not None:
            raise ValueError("sparsevlm sets its stages with options.layers, not ReductionConfig.layer")
        return list(options.layers)

    def scores(self, tokens: ImageTokens) -> torch.Tensor:
        return rater_scores(require(self, tokens, "text_attention"))[1]

    def select(self, tokens: ImageTokens, k: int, options: SparseVLMOptions) -> torch.Tensor:
        scores = self.scores(tokens)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        return topk_sorted(scores, k)

    def reduce(self, tokens: ImageTokens, n: int, options: SparseVLMOptions) -> Assignment:
        return sparsevlm_assignment(self.scores(tokens), tokens.features, n, options)
