"""One sample's token sequence through reduction, and batches of them.

A `SampleSeq` is everything the LLM needs about one unpadded sample: the input
features of each token, its position (1-D or M-RoPE axes), its size (members it
stands for), whether it is a visual token of a reduced span (those get the
calibration bias), and where decoding continues. Reduction maps one SampleSeq to
a shorter one; `restore.runtime.layout` pads a batch of them for the LLM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from restore.rectify.positions import slot_positions
from restore.tokens import Assignment


@dataclass(frozen=True)
class Span:
    """A contiguous run of visual tokens of one image or video."""

    start: int
    end: int
    grid: tuple[int, int, int] | None  # (T, H, W) of the tokens when they form a grid
    importance: torch.Tensor | None = None  # vision-tower CLS attention, (end-start,)
    keys: torch.Tensor | None = None  # vision-tower keys, (end-start, dk)
    # Token and frame counts before any reduction: budgets are set against these.
    origin: tuple[int, int] | None = None
    # Once reduced: the positions (M, A) of the original tokens, and the span token (M,) each now belongs to
    # (-1 when dropped), so a token merged again at a later stage takes the median of the originals it
    # stands for, not of the merged tokens' medians (DESIGN §2 step 3).
    origin_positions: torch.Tensor | None = None
    owner: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def frames(self) -> int:
        return self.grid[0] if self.grid is not None else 1

    @property
    def origin_tokens(self) -> int:
        return self.origin[0] if self.origin else self.length

    @property
    def origin_frames(self) -> int:
        return self.origin[1] if self.origin else self.frames


@dataclass
class SampleSeq:
    embeds: torch.Tensor  # (L, d)
    positions: torch.Tensor  # (L, A) long
    sizes: torch.Tensor  # (L,) float, 1 for text
    first_sizes: torch.Tensor  # (L,) float: uniform N/n over reduced spans
    calibrated: torch.Tensor  # (L,) bool
    spans: list[Span]
    next_position: torch.Tensor  # (A,) long
    position_policy: str = "median"
    calibration: str = "off"
    c: float = 2.0
    uniform_first_layer: bool = False

    @property
    def length(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def full(embeds: torch.Tensor, positions: torch.Tensor, spans: list[Span]) -> SampleSeq:
        length = embeds.shape[0]
        return SampleSeq(
            embeds=embeds,
            positions=positions,
            sizes=torch.ones(length),
            first_sizes=torch.ones(length),
            calibrated=torch.zeros(length, dtype=torch.bool),
            spans=spans,
            # The stock models continue one past the largest position on any axis, on every axis.
            next_position=torch.full((positions.shape[1],), int(positions.max()) + 1, dtype=torch.long),
        )

    def reduce(self, assignments: list[Assignment | None], policy: str) -> SampleSeq:
        """A new sequence with span i replaced by `assignments[i]`'s slots (None: unchanged)."""
        pieces: dict[str, list[torch.Tensor]] = {k: [] for k in ("e", "p", "s", "f", "c")}
        spans: list[Span] = []
        cursor = 0
        out_len = 0

        def take(a: int, b: int) -> None:
            pieces["e"].append(self.embeds[a:b])
            pieces["p"].append(self.positions[a:b])
            pieces["s"].append(self.sizes[a:b])
            pieces["f"].append(self.first_sizes[a:b])
            pieces["c"].append(self.calibrated[a:b])

        for span, assignment in zip(self.spans, assignments, strict=True):
            take(cursor, span.start)
            out_len += span.start - cursor
            cursor = span.end
            if assignment is None or (assignment.num_slots == span.length and bool((assignment.slot >= 0).all())):
                take(span.start, span.end)
                spans.append(replace(span, start=out_len, end=out_len + span.length))
                out_len += span.length
                continue
            sl = slice(span.start, span.end)
            weights = self.sizes[sl]
            n = assignment.num_slots
            origin_positions = span.origin_positions if span.origin_positions is not None else self.positions[sl]
            owner = span.owner if span.owner is not None else torch.arange(span.length)
            owner = torch.where(owner >= 0, assignment.slot[owner.clamp(min=0)], -1)
            pieces["e"].append(assignment.merge(self.embeds[sl], weights))
            pieces["p"].append(slot_positions(self.positions[sl], assignment, policy, (origin_positions, owner)))
            new_sizes = assignment.sizes(weights)
            pieces["s"].append(new_sizes)
            pieces["f"].append(torch.full((n,), float(new_sizes.sum()) / n))
            pieces["c"].append(torch.ones(n, dtype=torch.bool))
            spans.append(Span(start=out_len, end=out_len + n, grid=None, origin=(span.origin_tokens, span.origin_frames),
                              origin_positions=origin_positions, owner=owner))
            out_len += n
        take(cursor, self.length)
        positions = torch.cat(pieces["p"])
        next_position = self.next_position
        if policy == "compact":
            # Base methods as usually run: renumber every token, decode from the reduced length.
            total = positions.shape[0]
            positions = torch.arange(total)[:, None].expand(-1, self.positions.shape[1]).clone()
            next_position = torch.full_like(self.next_position, total)
        return replace(
            self,
            embeds=torch.cat(pieces["e"]),
            positions=positions,
            sizes=torch.cat(pieces["s"]),
            first_sizes=torch.cat(pieces["f"]),
            calibrated=torch.cat(pieces["c"]),
            spans=spans,
            next_position=next_position,
            position_policy=policy,
        )
