"""`visionzip`: VisionZip — CLS-attention dominant tokens plus merged contextual tokens.

Source: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision
Language Models", CVPR 2025.
Where: pre-LLM, on the vision tower's output tokens.
Score: the attention each patch receives from the vision tower's CLS query
(`tokens.importance`). `select` keeps the top-k by that score (what RESTORE
wraps). `reduce` is the method as its authors ran it: of n output tokens,
n - c are the dominant (top-attention) tokens and c are contextual tokens that
merge everything else: c targets are taken at a uniform stride among the
leftover tokens, every other leftover joins the target it is most similar to
(dot product of L2-normalised vision keys, or of features when the adapter has
no keys), and each contextual token is the mean of its group.
Defaults: contextual_ratio = 10/64 (54 dominant + 10 contextual at n = 64),
c = round(n * contextual_ratio) clamped to 0 <= c < n.
Positions of the original code: 'compact' (it rebuilds the visual sequence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method, require_importance
from restore.tokens import Assignment, ImageTokens, budget_share, topk_sorted


class VisionZipOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    contextual_ratio: float = Field(
        10 / 64,
        ge=0.0,
        lt=1.0,
        description="Share of the budget given to merged contextual tokens (the rest are dominant tokens); "
        "the paper's 54 + 10 split at 64 tokens is 10/64.",
    )


def visionzip_assignment(importance: torch.Tensor, sim_source: torch.Tensor, n: int, ratio: float) -> Assignment:
    """n slots: dominant tokens first (index order), then c contextual slots (target order).

    importance: (N,) CLS attention; sim_source: (N, d) keys or features used to group leftovers.
    """
    num = importance.shape[0]
    if n >= num:
        return Assignment.identity(num)
    c = budget_share(n, ratio)
    dominant = topk_sorted(importance.detach().float(), n - c).cpu()
    if c == 0:
        return Assignment.keep(dominant, num)
    leftover_mask = torch.ones(num, dtype=torch.bool)
    leftover_mask[dominant] = False
    leftover = torch.nonzero(leftover_mask).flatten()  # (M,), M = N - n + c > c
    # Targets at a uniform stride over the leftovers, as the authors sample them.
    step = leftover.numel() // c
    target_local = torch.arange(c) * step
    x = F.normalize(sim_source.detach().float(), dim=-1)[leftover.to(sim_source.device)]
    owner = (x @ x[target_local.to(x.device)].T).argmax(dim=1).cpu()  # (M,) index into targets
    owner[target_local] = torch.arange(c)  # a target always heads its own group
    slot = torch.full((num,), -1, dtype=torch.long)
    slot[dominant] = torch.arange(n - c)
    slot[leftover] = (n - c) + owner
    rep = torch.cat([dominant, leftover[target_local]])
    return Assignment(slot=slot, rep=rep)


@register
class VisionZip(Method):
    name = "visionzip"
    stage = "pre"
    description = "CLS-attention dominant tokens + contextual tokens merged from the rest"
    author_positions = "compact"
    needs_importance = True
    Options = VisionZipOptions

    def select(self, tokens: ImageTokens, k: int, options: VisionZipOptions) -> torch.Tensor:
        importance = require_importance(self, tokens)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        return topk_sorted(importance.detach().float(), k).cpu()

    def reduce(self, tokens: ImageTokens, n: int, options: VisionZipOptions) -> Assignment:
        importance = require_importance(self, tokens)
        sim_source = tokens.keys if tokens.keys is not None else tokens.features
        return visionzip_assignment(importance, sim_source, n, options.contextual_ratio)
