"""Left-padded batch views of `SampleSeq`s: the inputs one group of decoder layers takes, and the `Layout`
(which keys are valid, their positions, sizes and calibration) the biased attention reads."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from restore.sequence import SampleSeq


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
