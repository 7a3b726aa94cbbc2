"""`divprune`: DivPrune — keep the most diverse visual tokens (greedy max-min diversity).

Source: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models", CVPR 2025.
Where: pre-LLM, on the projected visual tokens; needs no attention scores.
Score: pruning is cast as the Max-Min Diversity Problem (keep the subset whose
smallest pairwise distance is largest), distance d(i, j) = 1 - cos(x_i, x_j) on
`tokens.features`, solved greedily: the first token is the one whose nearest
other token is farthest away (argmax_i min_{j != i} d(i, j)); each next token is
the one whose distance to its nearest already-selected token is largest.
Defaults: no hyperparameters; ties go to the lower index.
Positions of the original code: 'compact' (it rebuilds the visual sequence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import ImageTokens

# Rows of the N x N similarity computed at once for the first pick; bounds memory for long videos.
_CHUNK_ELEMENTS = 1 << 24


def nearest_other_distance(x: torch.Tensor) -> torch.Tensor:
    """(N,) min_{j != i} (1 - cos(x_i, x_j)) for unit rows x (N, d); +inf when N == 1."""
    num = x.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // max(num, 1))
    out = torch.empty(num, dtype=torch.float32, device=x.device)
    for start in range(0, num, rows):
        sim = x[start : start + rows] @ x.T
        local = torch.arange(sim.shape[0], device=x.device)
        sim[local, local + start] = float("-inf")  # a token is not its own neighbour
        out[start : start + rows] = 1.0 - sim.amax(dim=1)
    return out


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of k rows chosen greedily to maximise the minimum pairwise cosine distance."""
    num = features.shape[0]
    if k >= num:
        return torch.arange(num)
    x = F.normalize(features.detach().float(), dim=-1)
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    cur = torch.argmax(nearest_other_distance(x))
    # Running distance of every token to its nearest selected token: O(N*d) per pick, no N x N matrix.
    min_dist = torch.full((num,), float("inf"), device=x.device)
    for step in range(k):
        chosen[step] = cur
        if step == k - 1:
            break
        dist = (1.0 - x @ x[cur]).clamp_min(0.0)
        min_dist = torch.minimum(min_dist, dist)
        min_dist[cur] = float("-inf")  # selected tokens can never be picked again
        cur = torch.argmax(min_dist)  # first maximum: ties go to the lower index
    return torch.sort(chosen).values.cpu()


@register
class DivPrune(Method):
    name = "divprune"
    stage = "pre"
    description = "greedy max-min diversity of the projected visual tokens (cosine distance)"
    author_positions = "compact"

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        return max_min_diverse(tokens.features, k)
