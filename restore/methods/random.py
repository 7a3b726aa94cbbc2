"""`random`: keep a seeded uniform sample of the visual tokens.

Source: the random-pruning baseline reported across the VTR literature (e.g. the
FastV and VisionZip papers' ablations), a strong simple baseline.
Where: pre-LLM, on the projected visual tokens.
Score: none; a uniform sample without replacement.
Defaults: seed 0, so a given image and budget always keep the same tokens.
Positions of the original code: compact (the pruned sequence is renumbered).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import ImageTokens


class RandomOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = Field(0, description="Seed of the per-image sample; same seed, same tokens.")


@register
class RandomPrune(Method):
    name = "random"
    stage = "pre"
    description = "seeded uniform random sample of the visual tokens"
    Options = RandomOptions

    def select(self, tokens: ImageTokens, k: int, options: RandomOptions) -> torch.Tensor:
        gen = torch.Generator().manual_seed(options.seed)
        return torch.sort(torch.randperm(tokens.num_tokens, generator=gen)[:k]).values
