"""`cdpruner`: CDPruner — keep the subset of maximal conditional diversity (a DPP conditioned on the prompt).

Source: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional
Diversity for Token Pruning in MLLMs" (CDPruner), arXiv 2506.10967 (June 2025),
NeurIPS 2025.
Where: pre-LLM, on the projected visual tokens; needs the instruction
(`tokens.text`: the prompt's text after the last visual span, which
`restore.plan.Plan.apply` passes), no attention scores.
Score: with unit features x_i, the similarity S_ij = cos(x_i, x_j); each token's
relevance to the instruction r_i = mean_m cos(x_i, t_m) over the instruction's
embeddings t_m, min-max normalised to [0, 1]. The conditional kernel
    L = diag(r) S diag(r),   L_ij = r_i r_j cos(x_i, x_j),
and the kept set is the DPP MAP subset argmax_{|Y| = k} det(L_Y), found by the
greedy algorithm with incremental Cholesky updates (Chen et al., "Fast Greedy MAP
Inference for Determinantal Point Process", NeurIPS 2018): each step adds the
token with the largest marginal gain d_j^2 = L_jj - ||c_j||^2, O(N k) memory, no
N x N matrix. Without an instruction r = 1 (plain DPP diversity).
Defaults: no hyperparameters; ties go to the lower index.
Positions of the original code: 'compact' (it rebuilds the visual sequence).
Differences from the paper: for LLaVA the paper embeds the instruction with the
CLIP text encoder and measures relevance against the vision tower's CLIP image
embeddings. The transformers LLaVA, LLaVA-OneVision and Qwen2.5-VL checkpoints
ship no text tower, so here both sides live in the LLM's input embedding space:
the projector outputs against the LLM's embeddings of the instruction tokens
(which tokens count as the instruction: all prompt text after the last image,
chat-template tokens included). Once the kernel's rank is spent (the greedy gains
fall to ~0, e.g. N > d), the remaining picks go to the most relevant tokens left,
so the budget is always met exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import ImageTokens

# Marginal gains below this are numerically zero: the kernel cannot grow the selected volume further.
_EPS = 1e-10


def instruction_relevance(features: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N,) mean cosine of each visual token to the instruction tokens, min-max scaled to [0, 1]; ones without text."""
    num = features.shape[0]
    if text is None or text.shape[0] == 0:
        return torch.ones(num, device=features.device)
    x = F.normalize(features.detach().float(), dim=-1)
    t = F.normalize(text.detach().float().to(x.device), dim=-1)
    rel = (x @ t.T).mean(dim=1)
    span = rel.max() - rel.min()
    if span <= 0:  # every token equally relevant: the condition carries no information
        return torch.ones(num, device=x.device)
    return (rel - rel.min()) / span


def dpp_greedy(x: torch.Tensor, quality: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of k rows greedily maximising det(L_Y), L = diag(q) (x x^T) diag(q).

    x: (N, d) rows (unit rows make x x^T a cosine kernel); quality: (N,) q >= 0.
    """
    num = x.shape[0]
    if k >= num:
        return torch.arange(num)
    x = x.float()
    q = quality.float().to(x.device)
    gain = q * q * (x * x).sum(-1)  # d_j^2 = L_jj before any pick
    chol = torch.zeros(k, num, device=x.device)  # row i: the i-th Cholesky coefficients c_{i,j} of every token
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    taken = torch.zeros(num, dtype=torch.bool, device=x.device)
    for i in range(k):
        open_gain = gain.masked_fill(taken, float("-inf"))
        j = torch.argmax(open_gain)  # first maximum: ties go to the lower index
        if open_gain[j] <= _EPS:
            # Kernel rank spent: fill with the most relevant tokens left, lower index first on ties.
            rest = torch.nonzero(~taken).flatten()
            order = torch.argsort(q[rest], descending=True, stable=True)[: k - i]
            chosen[i:] = rest[order]
            break
        chosen[i] = j
        taken[j] = True
        if i == k - 1:
            break
        row = q[j] * q * (x @ x[j])  # L_{j,:}
        e = (row - chol[:i, j] @ chol[:i]) / gain[j].sqrt()
        chol[i] = e
        gain = gain - e * e
    return torch.sort(chosen).values.cpu()


@register
class CDPruner(Method):
    name = "cdpruner"
    stage = "pre"
    description = "DPP MAP subset of the projected tokens under a kernel conditioned on the instruction"
    author_positions = "compact"
    needs_text = True

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        x = F.normalize(tokens.features.detach().float(), dim=-1)
        return dpp_greedy(x, instruction_relevance(tokens.features, tokens.text), k)
