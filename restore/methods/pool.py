"""`pool`: spatial average pooling of the visual token grid into exactly n cells.

Source: the pooling baseline of the VTR literature (LLaVA-1.5 with 2x2 average
pooling of the 24x24 grid is the classic case).
Where: pre-LLM, on the projected visual tokens' grid.
Score: none; the grid is cut into n near-equal, spatially compact cells (horizontal
bands, each split into columns) and each cell is averaged. Under RESTORE the base
method keeps the token nearest each cell's centre.
Defaults: no options; frames of a clip share the budget evenly when they can.
Positions of the original code: compact.
"""

from __future__ import annotations

import math

import torch

from restore.methods import register
from restore.methods.base import Method
from restore.tokens import Assignment, ImageTokens


def grid_cells(rows: int, cols: int, n: int) -> torch.Tensor:
    """(rows*cols,) cell id in [0, n) of each grid token, row-major cells, every cell non-empty."""
    # Enough bands that no band needs more cells than it has columns.
    bands = max(1, min(rows, max(round(math.sqrt(n * rows / cols)), math.ceil(n / cols)), n))
    per_band = [n // bands + (1 if b < n % bands else 0) for b in range(bands)]
    row_band = (torch.arange(rows) * bands) // rows
    cell = torch.empty(rows, cols, dtype=torch.long)
    first = 0
    for b, count in enumerate(per_band):
        band_rows = row_band == b
        if count > cols:
            raise ValueError(f"cannot cut a {rows}x{cols} grid into {n} cells")
        col_cell = (torch.arange(cols) * count) // cols
        cell[band_rows] = first + col_cell
        first += count
    return cell.flatten()


def _cells(tokens: ImageTokens, n: int) -> torch.Tensor:
    t, h, w = tokens.grid if tokens.grid is not None else (1, 1, tokens.num_tokens)
    if n <= h * w * t and t > 1 and n % t == 0:
        per_frame = grid_cells(h, w, n // t)
        return (per_frame.repeat(t) + torch.arange(t).repeat_interleave(h * w) * (n // t))
    # Frames that cannot share the budget evenly are laid side by side as one wide grid.
    wide = grid_cells(h, w * t, n) if t > 1 else grid_cells(h, w, n)
    if t == 1:
        return wide
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    order = torch.cat([(rows * (w * t) + cols + f * w).flatten() for f in range(t)])
    return wide[order]


@register
class Pool(Method):
    name = "pool"
    stage = "pre"
    description = "average pooling of the token grid into n spatial cells"

    def reduce(self, tokens: ImageTokens, n: int, options) -> Assignment:
        cell = _cells(tokens, n)
        rep = self.select(tokens, n, options)
        order = torch.argsort(cell[rep])
        # Slot s is cell s; its representative is the token nearest the cell centre.
        return Assignment(slot=cell, rep=rep[order])

    def select(self, tokens: ImageTokens, k: int, options) -> torch.Tensor:
        cell = _cells(tokens, k)
        coords = tokens.grid_coords()
        centre = torch.zeros(k, 3).index_add_(0, cell, coords) / torch.bincount(cell, minlength=k)[:, None]
        dist = (coords - centre[cell]).pow(2).sum(-1) + torch.arange(tokens.num_tokens) * 1e-6
        best = torch.full((k,), float("inf")).scatter_reduce(0, cell, dist, reduce="amin")
        chosen = torch.nonzero(dist == best[cell]).flatten()
        return torch.sort(chosen).values
