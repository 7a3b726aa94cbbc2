"""`random`: keep a seeded uniform sample of the visual tokens.

A strong simple baseline in the VTR literature. Pre-LLM; score: none (uniform);
default seed 0, so a given image and budget always keep the same tokens. The
original baselines run with compacted positions.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import ImageTokens, Method


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
