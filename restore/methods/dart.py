"""`dart`: DART — keep the visual tokens that duplicate a few pivot tokens least, inside the LLM.

Source: Wen et al., "Stop Looking for Important Tokens in Multimodal Language
Models: Duplication Matters More", 2025 (DART: Duplication-Aware Reduction of
Tokens).
Where: in-LLM; decoder layers 0..K-1 see every visual token, layer K (default
K = 2) and later see only the kept ones.
Score: duplication, not importance. Per image, p = min(pivots, k) pivot tokens
are the visual tokens with the largest L2 norm of their hidden state at layer K
(`tokens.features`; the paper ranks by key norm, and an adapter that passes
in-LLM keys as `tokens.keys` gets that instead); every other token's
duplication is its largest cosine similarity to any pivot,
    dup_i = max_p cos(x_i, x_p),
and the kept set is the pivots plus the k - p tokens with the smallest dup_i
(ties to the lower index). No attention weights are needed, so the score stays
compatible with fused attention kernels.
Defaults: K = 2, pivots = 8 per image.
Positions of the original code: 'original' (kept tokens keep their position ids).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import ImageTokens, topk_sorted


class DARTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pivots: int = Field(8, ge=1, description="Pivot tokens per image, chosen by largest hidden-state (key) norm.")


def dart_select(x: torch.Tensor, k: int, pivots: int) -> torch.Tensor:
    """Indices (sorted, exactly k) of the pivots plus the tokens least similar to them. x: (N, d)."""
    x = x.detach().float()
    p = min(pivots, k)
    pivot = topk_sorted(x.norm(dim=-1), p)
    xn = F.normalize(x, dim=-1)
    dup = (xn @ xn[pivot].T).amax(dim=1)  # (N,) largest cosine to any pivot
    dup[pivot] = float("-inf")  # pivots always stay
    return topk_sorted(-dup, k).cpu()


@register
class DART(Method):
    name = "dart"
    stage = "llm"
    description = "in-LLM: keep key-norm pivots and the tokens that duplicate them least"
    author_positions = "original"
    default_layer = 2
    Options = DARTOptions

    def select(self, tokens: ImageTokens, k: int, options: DARTOptions) -> torch.Tensor:
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        if k <= 0:
            return torch.empty(0, dtype=torch.long)
        source = tokens.keys if tokens.keys is not None else tokens.features
        return dart_select(source, k, options.pivots)
