"""The running decode batch of a continuous-batching scheduler: its KV cache and the layouts the biased
attention reads, with rows that join (a newly prefilled group is merged in) and leave (rows selected out).

In-LLM methods make the cache of each decoder layer hold a different number of tokens per request, so the
batch keeps one `Layout` per *segment*: a run of decoder layers, starting at a layer in `starts`, over which
every row's cache length is constant (the union of every row's in-LLM stage layers cuts the depth into
segments). Every layer of a segment holds `layout.length` keys, left-padded per row; padded keys are invalid
in the layout, so the attention masks them out, and each row's own keys, positions and sizes are exactly
those it had when prefilled alone.

A layout's `log_first` is read only at the first layer of its segment (the layer that first sees a reduced
sequence uses uniform sizes, DESIGN §2 step 4). A row whose own stage does not start at a segment's first
layer gets `log_first = log_size` there, so it reads its merged sizes, as it would alone.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from restore.runtime.layout import Layout


def layout_at(layouts: list[Layout], layer: int) -> Layout:
    """The layout that holds at decoder `layer`: the last one starting at or before it."""
    current = layouts[0]
    for lay in layouts[1:]:
        if lay.start_layer <= layer:
            current = lay
    return current


def resegment(layouts: list[Layout], starts: list[int]) -> list[Layout]:
    """`layouts` cut at `starts` (a superset of their own start layers): one layout per segment."""
    out = []
    for s in starts:
        lay = layout_at(layouts, s)
        out.append(lay if lay.start_layer == s else replace(lay, start_layer=s, log_first=lay.log_size))
    return out


def pad_layout(lay: Layout, length: int) -> Layout:
    """`lay` left-padded with invalid keys to `length` columns."""
    pad = length - lay.length
    if pad == 0:
        return lay
    b, dev = lay.valid.shape[0], lay.valid.device
    axes = lay.positions.shape[2]
    zeros = torch.zeros(b, pad, device=dev, dtype=lay.log_size.dtype)
    return replace(
        lay,
        valid=torch.cat([torch.zeros(b, pad, dtype=torch.bool, device=dev), lay.valid], 1),
        positions=torch.cat([torch.ones(b, pad, axes, dtype=lay.positions.dtype, device=dev), lay.positions], 1),
        log_size=torch.cat([zeros, lay.log_size], 1),
        log_first=torch.cat([zeros, lay.log_first], 1),
        calibrated=torch.cat([zeros.bool(), lay.calibrated], 1),
    )


def cat_layouts(a: Layout, b: Layout) -> Layout:
    """Rows of `a` then rows of `b`, both left-padded to the longer one (same segment start)."""
    length = max(a.length, b.length)
    a, b = pad_layout(a, length), pad_layout(b, length)
    return Layout(
        valid=torch.cat([a.valid, b.valid]),
        positions=torch.cat([a.positions, b.positions]),
        log_size=torch.cat([a.log_size, b.log_size]),
        log_first=torch.cat([a.log_first, b.log_first]),
        calibrated=torch.cat([a.calibrated, b.calibrated]),
        distance=torch.cat([a.distance, b.distance]),
        c=torch.cat([a.c, b.c]),
        start_layer=a.start_layer,
    )


def select_layout(lay: Layout, rows: torch.Tensor, drop: int) -> Layout:
    """Rows `rows` of `lay`, without its first `drop` columns."""
    return Layout(
        valid=lay.valid[rows, drop:],
        positions=lay.positions[rows, drop:],
        log_size=lay.log_size[rows, drop:],
        log_first=lay.log_first[rows, drop:],
        calibrated=lay.calibrated[rows, drop:],
        distance=lay.distance[rows],
        c=lay.c[rows],
        start_layer=lay.start_layer,
    )


def _pad_kv(t: torch.Tensor, length: int) -> torch.Tensor:
    pad = length - t.shape[2]
    if pad == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], pad, t.shape[3]), t], 2)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:  # sliding-window, static, quantized layers: not supported
            raise NotImplementedError(
                f"continuous batching needs full-attention DynamicLayer caches; this model's cache has "
                f"{type(layer).__name__} layers"
            )
    return cache.layers


class DecodeBatch:
    """The running batch: the cache, one layout per segment of decoder layers, the logits each row chooses
    its next token from, the position of each row's next token, and per row the keys each layer holds
    (`lengths`: per row, per decoder layer, as prefilled)."""

    def __init__(self, layouts: list[Layout], cache: DynamicCache, logits: torch.Tensor, next_pos: torch.Tensor,
                 lengths: list[list[int]]) -> None:
        self.layouts = layouts
        self.cache = cache
        self.logits = logits  # (B, V) float
        self.next_pos = next_pos  # (B, A) long: where each row's next token goes
        self._prompt = lengths  # per row, per decoder layer: the row's own (unpadded) keys when it joined
        self._joined = [0] * len(lengths)  # per row: the value of `_steps` when it joined
        self._steps = 0  # decode steps this batch ran
        _layers(cache)
        self._check()

    @property
    def size(self) -> int:
        return self.logits.shape[0]

    @property
    def starts(self) -> list[int]:
        return [lay.start_layer for lay in self.layouts]

    def cache_lengths(self) -> list[int]:
        """Keys each decoder layer's cache holds (padded), layer by layer."""
        return [layer.keys.shape[2] for layer in self.cache.layers]

    def _check(self) -> None:
        for idx, layer in enumerate(self.cache.layers):
            lay = layout_at(self.layouts, idx)
            if layer.keys.shape[2] != lay.length or layer.keys.shape[0] != self.size:
                raise RuntimeError(
                    f"layer {idx} caches {tuple(layer.keys.shape)} but its layout is {tuple(lay.valid.shape)}"
                )

    def merge(self, other: DecodeBatch) -> None:
        """Append `other`'s rows (a newly prefilled group) to this batch."""
        starts = sorted(set(self.starts) | set(other.starts))
        mine, theirs = resegment(self.layouts, starts), resegment(other.layouts, starts)
        self.layouts = [cat_layouts(a, b) for a, b in zip(mine, theirs, strict=True)]
        for idx, (a, b) in enumerate(zip(_layers(self.cache), _layers(other.cache), strict=True)):
            length = layout_at(self.layouts, idx).length
            a.keys = torch.cat([_pad_kv(a.keys, length), _pad_kv(b.keys, length)])
            a.values = torch.cat([_pad_kv(a.values, length), _pad_kv(b.values, length)])
        self.logits = torch.cat([self.logits, other.logits])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self._prompt = self._prompt + other._prompt
        self._joined = self._joined + [self._steps] * other.size
        self._check()

    def select(self, keep: list[int]) -> None:
        """Keep rows `keep` (in that order), freeing the others' cache rows, and drop the columns on the left
        that no remaining row needs."""
        if not keep:
            raise ValueError("a decode batch keeps at least one row; drop the batch instead")
        rows = torch.tensor(keep, device=self.logits.device)
        self._prompt = [self._prompt[i] for i in keep]
        self._joined = [self._joined[i] for i in keep]
        lengths = self.row_lengths()
        drops = [lay.length - max(r[lay.start_layer] for r in lengths) for lay in self.layouts]
        self.layouts = [select_layout(lay, rows, d) for lay, d in zip(self.layouts, drops, strict=True)]
        for idx, layer in enumerate(_layers(self.cache)):
            seg = max(i for i, s in enumerate(self.starts) if s <= idx)
            layer.keys = layer.keys[rows, :, drops[seg]:]
            layer.values = layer.values[rows, :, drops[seg]:]
        self.logits = self.logits[rows]
        self.next_pos = self.next_pos[rows]
        self._check()

    def row_lengths(self) -> list[list[int]]:
        """Per row, per decoder layer: the keys the row itself holds (its cache without padding)."""
        return [[n + self._steps - j for n in p] for p, j in zip(self._prompt, self._joined, strict=True)]

    def advanced(self) -> None:
        """Every row fed one more token (its keys grew by one at every layer)."""
        self.next_pos = self.next_pos + 1
        self._steps += 1
