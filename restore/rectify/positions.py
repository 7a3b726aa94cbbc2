"""Positions of reduced tokens (DESIGN §2 step 3).

Kept tokens keep their original position; a merged token takes the median of
its members' positions, per axis for M-RoPE (the lower median for an even count,
so positions stay integers, as torch.median does). 'compact' renumbering is done
on the whole sequence, see restore.sequence.
"""

from __future__ import annotations

import torch

from restore.rectify.assignment import Assignment


def group_lower_median(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups,) lower median of `values` (M,) within each group id of `group` (M,)."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(group, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return values[order[starts + (counts - 1) // 2]]


def slot_positions(positions: torch.Tensor, assignment: Assignment, policy: str) -> torch.Tensor:
    """(n, A) positions of the output slots from the members' positions (N, A)."""
    if policy == "original" or policy == "compact":
        return positions[assignment.rep]
    if policy != "median":
        raise ValueError(f"unknown position policy {policy!r}")
    live = assignment.slot >= 0
    group = assignment.slot[live]
    member_pos = positions[live]
    return torch.stack(
        [group_lower_median(member_pos[:, a], group, assignment.num_slots) for a in range(positions.shape[1])],
        dim=1,
    )
