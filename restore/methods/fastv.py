"""`fastv`: FastV — drop the visual tokens the prompt pays least attention to, inside the LLM.

Source: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models", ECCV 2024.
Where: in-LLM; decoder layers 0..K-1 see every visual token, layer K (default
K = 2) and later see only the kept ones.
Score: the attention the last prompt token pays to each visual token at layer
K-1, averaged over heads (the engine computes that one query row and passes it
as `tokens.importance`); the method keeps the top-k.
Defaults: K = 2; the budget comes from the reduction config.
Positions of the original code: 'original' (it gathers the kept tokens' own
position ids rather than renumbering the sequence).
"""

from __future__ import annotations

import torch

from restore.methods import register
from restore.methods.base import Method, require_importance
from restore.tokens import ImageTokens, topk_sorted


@register
class FastV(Method):
    name = "fastv"
    stage = "llm"
    description = "in-LLM: keep the visual tokens the last prompt token attends to most at layer K-1"
    author_positions = "original"
    default_layer = 2
    needs_importance = True

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        importance = require_importance(self, tokens)
        if k >= tokens.num_tokens:
            return torch.arange(tokens.num_tokens)
        return topk_sorted(importance.detach().float(), k).cpu()
