"""`tome`: ToMe — bipartite soft matching, repeated on the visual tokens until n remain.

Source: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023.
Where: pre-LLM, on the vision tower's output tokens (the paper merges inside
every ViT block; here the same matching runs on the tokens handed to the LLM).
Score: similarity only, no importance. One round on the current M tokens
(kept in the order of their representatives' original indices): tokens at even
positions form set A, odd positions set B; each A token draws an edge to its
most similar B token (cosine on vision keys, or on features when the adapter
has no keys; ties to the lower B index); the r = min(M - n, |A|) edges with the
highest similarity (ties to the lower A index) are merged, the A token folding
into its B token. Merged tokens carry their size s (original tokens they hold):
a merged token's key/feature is the size-weighted mean of its members, which is
what proportional attention (log s added to the logits) expects. Rounds repeat
until n tokens remain. `reduce` returns the groups as an `Assignment` (sizes are
the true member counts; the engine's size-weighted merge reproduces the
size-weighted means); slot s is represented by the original token of the B
token that survived every merge into it.
`select(k)` (what RESTORE wraps) merges down to k and returns those k
representatives.
Defaults: none (r is set by the budget each round).
Positions of the original code: 'compact' (a merged sequence is renumbered).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import Assignment, ImageTokens


def bipartite_merge(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge rows of x (N, d) down to n groups by repeated bipartite soft matching.

    Returns (group (N,) long: each original row's group in [0, n), rep (n,) long: each
    group's representative, ascending), both on the CPU.
    """
    num = x.shape[0]
    device = x.device
    feat = x.detach().float().clone()  # (M, d) size-weighted mean of each current token's members
    size = torch.ones(num, device=device)  # (M,)
    rep = torch.arange(num, device=device)  # (M,) ascending
    group = torch.arange(num, device=device)  # (N,) current token of each original row
    while feat.shape[0] > n:
        m = feat.shape[0]
        a = torch.arange(0, m, 2, device=device)
        b = torch.arange(1, m, 2, device=device)
        r = min(m - n, a.numel())
        xn = F.normalize(feat, dim=-1)
        sim = xn[a] @ xn[b].T  # (|A|, |B|)
        nearest = sim.argmax(dim=1)
        best = sim.gather(1, nearest[:, None]).squeeze(1)
        chosen = torch.argsort(best, descending=True, stable=True)[:r]
        src, dst = a[chosen], b[nearest[chosen]]
        total = size.clone().index_add_(0, dst, size[src])
        acc = (feat * size[:, None]).index_add_(0, dst, feat[src] * size[src, None])
        feat = acc / total[:, None]
        target = torch.arange(m, device=device)
        target[src] = dst
        alive = torch.ones(m, dtype=torch.bool, device=device)
        alive[src] = False
        renumber = torch.cumsum(alive, 0) - 1  # new index of each surviving token
        group = renumber[target[group]]
        feat, size, rep = feat[alive], total[alive], rep[alive]
    return group.cpu(), rep.cpu()


def tome_assignment(sim_source: torch.Tensor, n: int) -> Assignment:
    num = sim_source.shape[0]
    if n >= num:
        return Assignment.identity(num)
    if n < 1:
        raise ValueError(f"tome needs a budget of at least one token, got {n}")
    group, rep = bipartite_merge(sim_source, n)
    return Assignment(slot=group, rep=rep)


@register
class ToMe(Method):
    name = "tome"
    stage = "pre"
    description = "bipartite soft matching: merge the most similar A-B token pairs until n remain"
    author_positions = "compact"

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        if k <= 0:
            return torch.empty(0, dtype=torch.long)
        return self.reduce(tokens, k, options).rep

    def reduce(self, tokens: ImageTokens, n: int, options) -> Assignment:
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return tome_assignment(sim_source, n)
