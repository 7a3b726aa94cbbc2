"""`dart`: DART — keep the visual tokens that duplicate a few pivot tokens least, inside the LLM.

Source: Wen et al., "Stop Looking for Important Tokens in Multimodal Language
Models: Duplication Matters More", 2025 (DART: Duplication-Aware Reduction of
Tokens).
Where: in-LLM; decoder layers 0..K-1 see every visual token, layer K (default
K = 2) and later see only the kept ones.
Score: duplication, not importance. Per image, p = min(pivots, k) pivot tokens
are the visual tokens whose keys have the largest L2 norm (the paper's K-norm
criterion). The keys are those of decoder layer K-1, the last layer that sees
every token, as the engine records them there (`tokens.layer_keys`, heads
concatenated; RoPE rotates each head's key without changing its norm). Every
other token's duplication is its largest cosine similarity, on the hidden states
entering layer K (`tokens.features`), to any pivot,
    dup_i = max_p cos(x_i, x_p),
and the kept set is the pivots plus the k - p tokens with the smallest dup_i
(ties to the lower index). No attention weights are needed, so the layer that
records the keys keeps its fused attention kernel.
What differs from the paper, and why: the keys come from layer K-1 rather than
from layer K itself, because the engine reduces before layer K runs (the same
point at which FastV reads its attention row); pivots are taken per image (per
span) so that every request in a batch is reduced on its own.
Defaults: K = 2, pivots = 8 per image.
Positions of the original code: 'original' (kept tokens keep their position ids).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method, require
from restore.tokens import ImageTokens, topk_sorted


class DARTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pivots: int = Field(8, ge=1, description="Pivot tokens per image, chosen by the largest key L2 norm at layer K-1.")


def dart_select(x: torch.Tensor, key_norm: torch.Tensor, k: int, pivots: int) -> torch.Tensor:
    """Indices (sorted, exactly k) of the largest-key-norm pivots plus the tokens whose features x (N, d)
    are least similar to them."""
    x = x.detach().float()
    p = min(pivots, k)
    pivot = topk_sorted(key_norm.detach().float().cpu(), p)
    xn = F.normalize(x, dim=-1)
    dup = (xn @ xn[pivot.to(xn.device)].T).amax(dim=1).cpu()  # (N,) largest cosine to any pivot
    dup[pivot] = float("-inf")  # pivots always stay
    return topk_sorted(-dup, k)


@register
class DART(Method):
    name = "dart"
    stage = "llm"
    description = "in-LLM: keep key-norm pivots and the tokens that duplicate them least"
    author_positions = "original"
    default_layer = 2
    needs_layer_keys = True
    Options = DARTOptions

    def select(self, tokens: ImageTokens, k: int, options: DARTOptions) -> torch.Tensor:
        keys = require(self, tokens, "layer_keys")
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        if k <= 0:
            return torch.empty(0, dtype=torch.long)
        return dart_select(tokens.features, keys.float().norm(dim=-1), k, options.pivots)
