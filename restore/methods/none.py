"""`none`: every visual token reaches the LLM; the stock model's behaviour.

Source: none (the reference every method is compared with). Where: nowhere.
Score: none. Defaults: none. Positions: the stock model's own (original).
"""

from __future__ import annotations

import torch

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import ImageTokens


@register
class NoReduction(Method):
    name = "none"
    stage = "pre"
    description = "keep every visual token (the stock model)"
    author_positions = "original"

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        return torch.arange(tokens.num_tokens)
