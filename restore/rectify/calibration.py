"""Attention calibration (DESIGN §2 step 4).

The logit of query m on a visual key j gets b(m, j) = log s_j + log(c - D(|p_m - p_j|)),
where D is RoPE's relative decay with the model's own frequencies:
    D(delta) = (2/d_h) * sum_{i=1..d_h/2} cos(delta_{axis(i)} * theta_i).
For 1-D RoPE every frequency reads the same delta. For M-RoPE, frequency i reads
the axis (t, h, w) its mrope section assigns it; this is DESIGN's sum over
sections with each section weighted by its share of the head dim, written so that
D(0) = 1 (DESIGN's (2 d_g / d_h) weights with a per-section normalised D_g sum
to 2, which would make log(c - D(0)) = log 0 at c = 2; the per-frequency form is
the one consistent with the 1-D definition).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeSpec:
    """The RoPE parameters D needs: inverse frequencies and which position axis each reads."""

    inv_freq: torch.Tensor  # (d_h/2,) float
    axis: torch.Tensor  # (d_h/2,) long in [0, num_axes)
    num_axes: int

    @property
    def head_dim(self) -> int:
        return 2 * self.inv_freq.numel()

    @staticmethod
    def one_d(inv_freq: torch.Tensor) -> RopeSpec:
        inv = inv_freq.detach().float().cpu()
        return RopeSpec(inv_freq=inv, axis=torch.zeros(inv.numel(), dtype=torch.long), num_axes=1)

    @staticmethod
    def sectioned(inv_freq: torch.Tensor, sections: list[int]) -> RopeSpec:
        inv = inv_freq.detach().float().cpu()
        if sum(sections) != inv.numel():
            raise ValueError(f"mrope sections {sections} do not cover {inv.numel()} frequencies")
        axis = torch.cat([torch.full((s,), i % 3, dtype=torch.long) for i, s in enumerate(sections)])
        return RopeSpec(inv_freq=inv, axis=axis, num_axes=3)


def decay_tables(rope: RopeSpec, max_delta: int, device=None) -> torch.Tensor:
    """(A, max_delta+1) table[a, delta] = (2/d_h) * sum over frequencies of axis a of cos(delta*theta)."""
    delta = torch.arange(max_delta + 1, dtype=torch.float64)
    cos = torch.cos(delta[:, None] * rope.inv_freq.double()[None, :])  # (Δ, F)
    onehot = torch.nn.functional.one_hot(rope.axis, rope.num_axes).double()  # (F, A)
    return ((cos @ onehot) * (2.0 / rope.head_dim)).T.float().to(device)


def relative_decay(rope: RopeSpec, delta: torch.Tensor) -> torch.Tensor:
    """D for integer distances `delta` (..., A) (A=1 for 1-D RoPE)."""
    delta = delta.abs().long()
    tables = decay_tables(rope, int(delta.max().item()) if delta.numel() else 0, device=delta.device)
    per_axis = [tables[a][delta[..., a]] for a in range(rope.num_axes)]
    return torch.stack(per_axis, dim=-1).sum(dim=-1)


def calibration_bias(
    rope: RopeSpec,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    key_log_size: torch.Tensor,
    key_visual: torch.Tensor,
    c: torch.Tensor,
    distance: torch.Tensor,
) -> torch.Tensor:
    """(B, Lq, Lk) additive bias: log s_j (+ log(c - D) where `distance`) on visual keys, 0 elsewhere.

    query_pos (B, Lq, A), key_pos (B, Lk, A) long; key_log_size (B, Lk); key_visual (B, Lk) bool;
    c (B,) float; distance (B,) bool. The distance term is built only over the visual
    columns (a small Lq x V table), never over all key pairs.
    """
    bsz, lq = query_pos.shape[:2]
    bias = torch.zeros(bsz, lq, key_pos.shape[1], dtype=torch.float32, device=key_pos.device)
    bias += torch.where(key_visual, key_log_size.float(), 0.0)[:, None, :]
    if not bool(distance.any()) or not bool(key_visual.any()):
        return bias
    counts = key_visual.sum(dim=1)
    vmax = int(counts.max().item())
    # Gather each sample's visual key columns into a padded (B, V) index table.
    order = torch.argsort((~key_visual).to(torch.int8), dim=1, stable=True)[:, :vmax]
    col_ok = torch.arange(vmax, device=key_pos.device)[None, :] < counts[:, None]
    vis_pos = torch.gather(key_pos, 1, order[..., None].expand(-1, -1, key_pos.shape[2]))
    delta = query_pos[:, :, None, :] - vis_pos[:, None, :, :]
    term = torch.log(c.float().view(-1, 1, 1) - relative_decay(rope, delta))
    term = torch.where((col_ok & distance[:, None])[:, None, :], term, 0.0)
    return bias.scatter_add_(2, order[:, None, :].expand(-1, lq, -1), term)
