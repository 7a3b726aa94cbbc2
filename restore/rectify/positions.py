"""Positions of reduced tokens (DESIGN §2 step 3).

Kept tokens keep their original position; a merged token takes the median of
the positions of the original tokens it stands for, per axis for M-RoPE (the
lower median for an even count, so positions stay integers, as torch.median
does); across in-LLM stages a token merged twice still counts its original
members. 'compact' renumbering is done on the whole sequence, see restore.sequence.
"""

from __future__ import annotations

import torch

from restore.tokens import Assignment


def group_lower_median(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups,) lower median of `values` (M,) within each group id of `group` (M,)."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(group, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return values[order[starts + (counts - 1) // 2]]


def slot_positions(
    positions: torch.Tensor,
    assignment: Assignment,
    policy: str,
    originals: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(n, A) positions of the output slots of the tokens at `positions` (N, A).

    `originals` = (positions (M, A) of the original tokens these tokens stand for, output slot of each (M,),
    -1 when dropped); None: each token stands for itself.
    """
    if policy == "original" or policy == "compact":
        return positions[assignment.rep]
    if policy != "median":
        raise ValueError(f"unknown position policy {policy!r}")
    origin_pos, slot = originals if originals is not None else (positions, assignment.slot)
    live = slot >= 0
    group = slot[live]
    member_pos = origin_pos[live]
    return torch.stack(
        [group_lower_median(member_pos[:, a], group, assignment.num_slots) for a in range(positions.shape[1])],
        dim=1,
    )
