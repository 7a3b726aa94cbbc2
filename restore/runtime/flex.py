"""RESTORE's attention bias as a `flex_attention` score_mod: the candidate CUDA path beside the dense mask.

The engine's path (`ForwardContext.mask` + SDPA) materialises a (B, 1, q, L) float mask per stage and
step. `flex_attention` can instead evaluate the same bias per (batch, head, query, key) from small
tables: which keys are valid, each key's calibrated log size, every token's position, each sample's
c and distance flag, and the RoPE decay table D of the distance term. The two must give the same
outputs (a CPU test checks it on built layouts); which is faster is a GPU measurement
(`python -m restore.bench.attention`), so the engine keeps the dense mask until one is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from restore.rectify.calibration import RopeSpec, decay_tables
from restore.runtime.layout import Layout


@dataclass(frozen=True)
class BiasTables:
    """What the score_mod reads, all small: (B, L) per key, (B, L, A) positions, (B,) per sample."""

    valid: torch.Tensor  # (B, L) bool
    size: torch.Tensor  # (B, L) float: log size on calibrated keys, 0 elsewhere
    positions: torch.Tensor  # (B, L, A) long
    distance_keys: torch.Tensor  # (B, L) bool: calibrated keys of samples with the distance term
    c: torch.Tensor  # (B,) float
    decay: torch.Tensor | None  # (A, M+1) float, D per axis and distance; None: no distance term
    offset: int  # key index of query 0 (k_len - q_len)


def bias_tables(rope: RopeSpec, lay: Layout, first: bool, q_len: int, prefill: bool) -> BiasTables:
    """The tables of layer group `lay` (`first`: its first layer, which reads `log_first`), for `q_len`
    queries; the distance term exists only in a prefill over every key, as in `ForwardContext.mask`."""
    log_size = lay.log_first if first else lay.log_size
    size = torch.where(lay.calibrated, log_size.float(), 0.0)
    with_distance = prefill and q_len == lay.length and bool(lay.distance.any()) and bool(lay.calibrated.any())
    decay = None
    if with_distance:
        span = int((lay.positions.max() - lay.positions.min()).item()) if lay.positions.numel() else 0
        decay = decay_tables(rope, span, device=lay.valid.device)
    return BiasTables(
        valid=lay.valid, size=size, positions=lay.positions.long(),
        distance_keys=lay.calibrated & lay.distance[:, None], c=lay.c.float(), decay=decay,
        offset=lay.length - q_len,
    )


def score_mod(t: BiasTables) -> Callable:
    """score + log s_j (+ log(c - D(|p_q - p_j|)) on visual keys with the distance term); -inf where the key
    is padding or in the query's future."""
    axes = t.positions.shape[-1]

    def mod(score, b, h, q, kv):
        qa = q + t.offset
        allowed = t.valid[b, kv] & (kv <= qa)
        out = score + t.size[b, kv]
        if t.decay is not None:
            d = t.decay[0][(t.positions[b, qa, 0] - t.positions[b, kv, 0]).abs()]
            for a in range(1, axes):
                d = d + t.decay[a][(t.positions[b, qa, a] - t.positions[b, kv, a]).abs()]
            out = out + torch.where(t.distance_keys[b, kv], torch.log(t.c[b] - d), 0.0)
        return torch.where(allowed, out, -float("inf"))

    return mod


def flex_biased_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tables: BiasTables,
                          scale: float | None = None, kernel: Callable | None = None) -> torch.Tensor:
    """(B, H, q, d) attention under RESTORE's bias; `kernel` is `flex_attention` or a compiled copy of it
    (CUDA wants `torch.compile(flex_attention)`; eager runs anywhere, slowly)."""
    from torch.nn.attention.flex_attention import flex_attention

    kernel = kernel or flex_attention
    gqa = key.shape[1] != query.shape[1]
    return kernel(query, key, value, score_mod=score_mod(tables), scale=scale, enable_gqa=gqa)
