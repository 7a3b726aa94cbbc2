"""One sample's token sequence through reduction, and batches of them.

A `SampleSeq` is everything the LLM needs about one unpadded sample: the input
features of each token, its position (1-D or M-RoPE axes), its size (members it
stands for), whether it is a visual token of a reduced span (those get the
calibration bias), and where decoding continues. Reduction maps one SampleSeq to
a shorter one; `Layout`s are the left-padded batch views the attention reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from restore.rectify.assignment import Assignment
from restore.rectify.positions import slot_positions


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
            pieces["e"].append(assignment.merge(self.embeds[sl], weights))
            pieces["p"].append(slot_positions(self.positions[sl], assignment, policy))
            new_sizes = assignment.sizes(weights)
            pieces["s"].append(new_sizes)
            pieces["f"].append(torch.full((n,), float(new_sizes.sum()) / n))
            pieces["c"].append(torch.ones(n, dtype=torch.bool))
            spans.append(Span(start=out_len, end=out_len + n, grid=None, origin=(span.origin_tokens, span.origin_frames)))
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


@dataclass
class Layout:
    """The keys one group of decoder layers holds, for the whole left-padded batch."""

    valid: torch.Tensor  # (B, L) bool
    positions: torch.Tensor  # (B, L, A) long
    log_size: torch.Tensor  # (B, L) float, 0 where no size calibration
    log_first: torch.Tensor  # (B, L) float: log_size, but N/n sizes for samples first reduced here
    calibrated: torch.Tensor  # (B, L) bool
    distance: torch.Tensor  # (B,) bool: size+distance calibration
    c: torch.Tensor  # (B,) float
    start_layer: int = 0

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def extend(self, positions: torch.Tensor) -> None:
        """Append decoded tokens (text, size 1) at `positions` (B, steps, A)."""
        b, steps = positions.shape[:2]
        dev = self.valid.device
        self.valid = torch.cat([self.valid, torch.ones(b, steps, dtype=torch.bool, device=dev)], 1)
        self.positions = torch.cat([self.positions, positions.to(dev)], 1)
        zeros = torch.zeros(b, steps, device=dev)
        self.log_size = torch.cat([self.log_size, zeros], 1)
        self.log_first = torch.cat([self.log_first, zeros], 1)
        self.calibrated = torch.cat([self.calibrated, zeros.bool()], 1)


def pad_batch(samples: list[SampleSeq], start_layer: int, first_here: list[bool], device) -> tuple[torch.Tensor, Layout]:
    """Left-pad samples into (B, L, d) inputs and their Layout."""
    bsz = len(samples)
    length = max(s.length for s in samples)
    dim = samples[0].embeds.shape[1]
    axes = samples[0].positions.shape[1]
    embeds = samples[0].embeds.new_zeros(bsz, length, dim)
    valid = torch.zeros(bsz, length, dtype=torch.bool)
    positions = torch.ones(bsz, length, axes, dtype=torch.long)
    log_size = torch.zeros(bsz, length)
    log_first = torch.zeros(bsz, length)
    calibrated = torch.zeros(bsz, length, dtype=torch.bool)
    for i, s in enumerate(samples):
        sl = slice(length - s.length, length)
        embeds[i, sl] = s.embeds
        valid[i, sl] = True
        positions[i, sl] = s.positions
        if s.calibration != "off":
            calibrated[i, sl] = s.calibrated
            log_size[i, sl] = torch.where(s.calibrated, s.sizes.log(), 0.0)
            first = s.first_sizes if (s.uniform_first_layer and first_here[i]) else s.sizes
            log_first[i, sl] = torch.where(s.calibrated, first.log(), 0.0)
    layout = Layout(
        valid=valid.to(device),
        positions=positions.to(device),
        log_size=log_size.to(device),
        log_first=log_first.to(device),
        calibrated=calibrated.to(device),
        distance=torch.tensor([s.calibration == "size+distance" for s in samples], device=device),
        c=torch.tensor([s.c for s in samples], dtype=torch.float32, device=device),
        start_layer=start_layer,
    )
    return embeds.to(device), layout


def unpad(hidden: torch.Tensor, layout: Layout, samples: list[SampleSeq]) -> list[SampleSeq]:
    """Replace each sample's embeds with its rows of a left-padded (B, L, d) tensor."""
    out = []
    for i, s in enumerate(samples):
        out.append(replace(s, embeds=hidden[i, layout.length - s.length :]))
    return out
