"""`prumerge_plus`: PruMerge+ — CLS-attention outliers plus spatially uniform samples, absorbing the rest.

Source: Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient
Large Multimodal Models" (ICCV 2025); PruMerge+ is the paper's variant that adds
spatially uniform samples to the adaptively chosen outliers.
Where: pre-LLM, on the vision tower's output tokens.
Score: the attention each patch receives from the vision tower's CLS query
(`tokens.importance`). Tokens whose attention is an outlier by the IQR rule,
    a_i > Q3 + iqr_factor * (Q3 - Q1)
(quartiles of the image's N attention values, linear interpolation), are kept.
The paper keeps as many outliers as it finds (an adaptive count); here the
budget is exact: if there are k or more outliers the top-k by attention are
kept, otherwise the remaining k - |outliers| are filled with spatially uniform
samples: the grid is cut into k compact cells (the `pool` method's cells; k
raster-order runs for the rare grids it cannot cut so), the token nearest each
cell centre is a candidate when its cell holds no outlier, and the fill takes
candidates at an even stride in cell order (there are always enough, since
outliers occupy at most |outliers| cells). `select` is this selection (what
RESTORE wraps).
`reduce` is the method as its authors ran it: every pruned token is clustered to
the kept token whose vision-tower key is most similar to its own (cosine; on
features when the adapter has no keys), and each kept token is replaced by the
CLS-attention-weighted average of its cluster (itself included),
    y_p = sum_j a_j x_j / sum_j a_j,
so nothing is dropped (sizes, which count members, sum to N).
What differs from the paper, and why: the paper lets each kept token gather its
nearest neighbours by key similarity, so a pruned token may feed several kept
tokens or none; an `Assignment` puts each token in exactly one slot, so here each
pruned token feeds only the kept token nearest to it. The paper merges the
vision tower's outputs before the projector; here the merge averages the
projector's outputs (`tokens.features`), the tokens the LLM sees. The paper keeps
as many outliers as it finds; here the budget is exact (above).
Defaults: iqr_factor = 1.5 (the standard IQR outlier fence).
Positions of the original code: 'compact' (it rebuilds the visual sequence
before the projector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import get_method, register
from restore.methods.base import Method, require_importance
from restore.methods.pool import _cells
from restore.tokens import Assignment, ImageTokens, topk_sorted


class PruMergeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    iqr_factor: float = Field(
        1.5, ge=0.0, description="Outlier fence: tokens with CLS attention above Q3 + iqr_factor * IQR are kept first."
    )


def iqr_outliers(importance: torch.Tensor, factor: float) -> torch.Tensor:
    """(N,) bool: attention above Q3 + factor * (Q3 - Q1)."""
    imp = importance.detach().float()
    q = torch.quantile(imp, torch.tensor([0.25, 0.75], device=imp.device))
    return imp > q[1] + factor * (q[1] - q[0])


def uniform_cells(tokens: ImageTokens, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) cell id of each token in the `pool` method's k-cell spatial cut, and (k,) the token
    nearest each cell's centre."""
    cell = _cells(tokens, k)
    centres = get_method("pool").select(tokens, k, None)
    return cell, centres[torch.argsort(cell[centres])]  # centres[c] lies in cell c


def prumerge_select(tokens: ImageTokens, importance: torch.Tensor, k: int, factor: float) -> torch.Tensor:
    """Indices (sorted, exactly k) of the IQR outliers plus spatially uniform fill samples."""
    imp = importance.detach().float()
    outlier = iqr_outliers(imp, factor).cpu()
    count = int(outlier.sum())
    if count >= k:
        return topk_sorted(imp, k).cpu()
    outliers = torch.nonzero(outlier).flatten()
    cell, centres = uniform_cells(tokens, k)
    occupied = torch.zeros(k, dtype=torch.bool)
    occupied[cell[outliers]] = True
    free = centres[~occupied]  # cells without an outlier, in cell order
    fill = k - count
    picks = free[(torch.arange(fill) * free.numel()) // fill]
    return torch.sort(torch.cat([outliers, picks])).values


def absorb_into_kept(sim_source: torch.Tensor, kept: torch.Tensor, importance: torch.Tensor) -> Assignment:
    """Every token joins its most similar kept token, weighted by its attention in the merge; slots in kept
    (index) order."""
    x = F.normalize(sim_source.detach().float(), dim=-1)
    owner = (x @ x[kept.to(x.device)].T).argmax(dim=1).cpu()  # (N,) index into kept
    owner[kept] = torch.arange(kept.numel())
    # Softmax weights are positive; the floor only guards a slot whose weights underflowed in low precision.
    weights = importance.detach().float().cpu().clamp_min(1e-12)
    return Assignment(slot=owner, rep=kept, weights=weights)


@register
class PruMergePlus(Method):
    name = "prumerge_plus"
    stage = "pre"
    description = "CLS-attention IQR outliers + spatially uniform samples; pruned tokens merged into the nearest kept"
    author_positions = "compact"
    needs_importance = True
    Options = PruMergeOptions

    def select(self, tokens: ImageTokens, k: int, options: PruMergeOptions) -> torch.Tensor:
        importance = require_importance(self, tokens)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        return prumerge_select(tokens, importance, k, options.iqr_factor)

    def reduce(self, tokens: ImageTokens, n: int, options: PruMergeOptions) -> Assignment:
        if n >= tokens.num_tokens:
            require_importance(self, tokens)
            return Assignment.identity(tokens.num_tokens)
        kept = self.select(tokens, n, options)
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return absorb_into_kept(sim_source, kept, tokens.importance)
