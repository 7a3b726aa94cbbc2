"""Synthetic visual tokens and checks shared by the method tests."""

from __future__ import annotations

import torch

from restore.methods import get_method
from restore.tokens import Assignment, ImageTokens


def make_tokens(grid=(1, 6, 8), dim=16, seed=0, keys=False, no_grid=False) -> ImageTokens:
    gen = torch.Generator().manual_seed(seed)
    num = grid[0] * grid[1] * grid[2]
    features = torch.randn(num, dim, generator=gen)
    importance = torch.rand(num, generator=gen).softmax(0)
    key = torch.randn(num, dim // 2, generator=gen) if keys else None
    # In-LLM signals: layer keys and 5 text tokens' attention rows (drawn after the rest: same features as before).
    layer_keys = torch.randn(num, dim, generator=gen)
    text = torch.rand(5, num, generator=gen).softmax(1)
    return ImageTokens(features=features, importance=importance, keys=key, grid=None if no_grid else grid,
                       layer_keys=layer_keys, text_attention=text)


def run_select(name: str, tokens: ImageTokens, k: int, **options) -> torch.Tensor:
    method = get_method(name)
    return method.select(tokens, k, method.validate_options(options))


def run_reduce(name: str, tokens: ImageTokens, n: int, **options) -> Assignment:
    method = get_method(name)
    return method.reduce(tokens, n, method.validate_options(options))


def check_indices(idx: torch.Tensor, k: int, num: int) -> None:
    assert idx.dtype == torch.long and idx.device.type == "cpu"
    assert idx.numel() == k
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.unique(idx).numel() == k
    assert int(idx.min()) >= 0 and int(idx.max()) < num
