"""What a model adapter knows about one model family (DESIGN §4).

An adapter turns requests into full-length `SampleSeq`s (text embeddings with
visual features in place, original positions, visual spans with the vision
tower's importance scores), and tells the engine how the stock text model takes
positions and what RoPE it uses. The LLM itself stays the stock class.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from restore.rectify.calibration import RopeSpec
from restore.request import Request
from restore.sequence import SampleSeq


@dataclass
class Prepared:
    """One request after the processor: token ids and the tensors the vision tower needs."""

    input_ids: torch.Tensor  # (L,)
    vision: dict[str, Any] = field(default_factory=dict)
    num_images: int = 0
    num_frames: int = 0  # of which the last `num_frames` are one video's frames (multi-image video path)


class Adapter:
    family: str = ""
    model_classes: tuple[str, ...] = ()

    def __init__(self, model, processor) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    # --- the stock pieces the engine drives
    @property
    def text_model(self):
        return self.model.model.language_model

    @property
    def lm_head(self):
        return self.model.lm_head

    @property
    def image_token(self) -> str:
        """The image placeholder prompts carry."""
        return getattr(self.processor, "image_token", "<image>")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def rope(self) -> RopeSpec:
        return RopeSpec.one_d(self.text_model.rotary_emb.inv_freq)

    def position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """The text model's position_ids from (B, L, A) positions: (B, L) for 1-D RoPE."""
        return positions[..., 0]

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list | tuple) else {int(eos)}

    def vision_layers_run(self) -> int | None:
        """Vision tower layers one image runs through; None: all of them."""
        return None

    # --- family specific
    def prepare(self, request: Request, index: int) -> Prepared:
        raise NotImplementedError

    def encode(self, prepared: list[Prepared]) -> list[SampleSeq]:
        raise NotImplementedError


def token_runs(ids: torch.Tensor, token_ids: set[int]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of tokens whose id is in `token_ids`."""
    hit = torch.zeros_like(ids, dtype=torch.bool)
    for t in token_ids:
        hit |= ids == t
    if not bool(hit.any()):
        return []
    edges = torch.diff(hit.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def split_runs(runs: list[tuple[int, int]], lengths: list[int], what: str) -> list[tuple[int, int]]:
    """Cut placeholder runs into one span per image, in order (adjacent images form one run)."""
    spans = []
    queue = list(lengths)
    for start, end in runs:
        pos = start
        while pos < end:
            if not queue:
                raise ValueError(f"{what}: more image placeholder tokens than image features")
            n = queue.pop(0)
            spans.append((pos, pos + n))
            pos += n
        if pos != end:
            raise ValueError(f"{what}: image placeholder tokens do not match the image features")
    if queue:
        raise ValueError(f"{what}: {len(queue)} image(s) have no placeholder tokens")
    return spans


class OutputCapture:
    """Capture what one module returns during a forward (a vision layer's q or k projection)."""

    def __init__(self, module) -> None:
        self.module = module
        self.output: torch.Tensor | None = None

    def __enter__(self):
        def hook(mod, args, output):
            self.output = output

        self._handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def hidden_state_indices(vision_feature_layer: int | list[int], depth: int) -> list[int]:
    """`vision_feature_layer` as non-negative indices into a tower's hidden states (embeddings, then each of
    `depth` layers), so that they keep pointing at the same layers when later layers are not run."""
    layers = list(vision_feature_layer) if isinstance(vision_feature_layer, list | tuple) else [vision_feature_layer]
    return [depth + 1 + v if v < 0 else v for v in layers]


@contextmanager
def first_layers(tower, encoder, count: int):
    """Run only the first `count` layers of `tower`'s `encoder` inside the block. LLaVA-1.5 reads the second to
    last layer's output, so the last layer would be computed and thrown away. The Engine runs one call at a time
    (Serve gives it one thread), which a temporary swap needs."""
    full = encoder.layers
    if count < len(full):
        # transformers hooks the layers a tower has at its first call to record hidden states; hook them all
        # now, or a later full-tower call (the stock model's own) would miss the layers cut here.
        maybe_install_capturing_hooks(tower)
        encoder.layers = full[:count]
    try:
        yield
    finally:
        encoder.layers = full


def cls_attention(q: torch.Tensor, k: torch.Tensor, query_index: int | None = 0) -> torch.Tensor:
    """(B, S) head-averaged attention of one query row on all keys; q, k (B, S, H, dh).

    query_index None uses the mean query (a pseudo-CLS for towers without a CLS token).
    One row, never the S x S matrix.
    """
    qrow = q.mean(dim=1) if query_index is None else q[:, query_index]  # (B, H, dh)
    logits = torch.einsum("bhd,bshd->bhs", qrow.float(), k.float()) * q.shape[-1] ** -0.5
    return torch.softmax(logits, dim=-1).mean(dim=1)
