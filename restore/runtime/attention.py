"""The biased attention function and the per-forward context that feeds it (DESIGN §4).

RESTORE's bias enters the stock transformers model through a registered
attention function, never through a copied modeling file. Per-forward state
(which keys each layer holds, their sizes and positions) cannot travel through
`forward`/`generate` keyword arguments, so it lives in a `ForwardContext` held in
a context variable while the engine runs the model.

Each decoder layer reads the `Layout` of its stage: before an in-LLM method's
layer K every token is there with size 1; from K on, the reduced sequence. The
mask of a (layout, first-layer) pair is built once per forward step and reused
by every layer of that stage, so the bias costs one small table per step, not
one per layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from restore.rectify.calibration import RopeSpec, calibration_bias
from restore.runtime.layout import Layout
from restore.runtime.stages import Stages

ATTENTION_NAME = "restore_sdpa"


@dataclass
class LayerRecord:
    """What decoder layer K-1 leaves for the in-LLM stage at K, for the whole left-padded batch; each part
    only when a method acting at K asks for it (`Stages.needs`)."""

    row: torch.Tensor | None = None  # (B, L) head-averaged attention of the last query on every key
    keys: torch.Tensor | None = None  # (B, L, h*d_h) the layer's keys (after RoPE), heads concatenated
    text: torch.Tensor | None = None  # (B, T, L) head-averaged attention of the text queries below
    text_index: torch.Tensor | None = None  # (B, T) long: padded position of each text query
    text_valid: torch.Tensor | None = None  # (B, T) bool: False where a sample has fewer than T


def attention_rows(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """(B, q, L) head-averaged softmax attention of the given query rows (B, H, q, d) on keys (B, H, L, d)
    under their mask rows (B, 1, q, L): a few rows, never the L x L matrix."""
    logits = (query.float() @ keys.float().transpose(-1, -2)) * scaling + mask.float()
    return torch.softmax(logits, dim=-1).mean(dim=1)


class ForwardContext:
    """What the biased attention needs during one prefill and its decode steps: the RoPE spec, the layout of
    each stage (the first is the batch as prefilled) and, for in-LLM methods, the `Stages` that reduce the
    batch before their layers."""

    def __init__(self, rope: RopeSpec, layout: Layout, stages: Stages | None = None) -> None:
        self.rope = rope
        self.layouts: list[Layout] = [layout]
        self.stages = stages
        self.stage_layers = stages.layers if stages is not None else []
        self.row_layers = {k - 1 for k in self.stage_layers}
        self.records: dict[int, LayerRecord] = {}
        self.phase = "prefill"
        self._masks: dict[tuple, torch.Tensor] = {}
        self._stage_rope: dict[int, tuple] = {}

    @classmethod
    def decoding(cls, rope: RopeSpec, layouts: list[Layout]) -> ForwardContext:
        """A context for decode steps over `layouts`, one per run of decoder layers (a running batch's
        segments, `restore.runtime.batch`); `begin_decode` extends them in place."""
        ctx = cls(rope, layouts[0])
        ctx.layouts = layouts
        ctx.phase = "decode"
        return ctx

    def layout_for(self, layer: int) -> Layout:
        current = self.layouts[0]
        for lay in self.layouts[1:]:
            if lay.start_layer <= layer:
                current = lay
        return current

    def begin_decode(self, positions: torch.Tensor) -> None:
        """Every layout gains the token(s) about to be decoded, at `positions` (B, steps, A)."""
        self.phase = "decode"
        self._masks.clear()
        for lay in self.layouts:
            lay.extend(positions)

    def mask(self, layer: int, q_len: int, k_len: int, dtype: torch.dtype) -> torch.Tensor:
        lay = self.layout_for(layer)
        first = layer == lay.start_layer
        key = (id(lay), first, q_len, k_len, dtype)
        cached = self._masks.get(key)
        if cached is None:
            cached = self._build_mask(lay, first, q_len, k_len, dtype)
            self._masks[key] = cached
        return cached

    def _build_mask(self, lay: Layout, first: bool, q_len: int, k_len: int, dtype: torch.dtype) -> torch.Tensor:
        if k_len != lay.length:
            raise RuntimeError(f"layer holds {k_len} keys but its layout has {lay.length}")
        dev = lay.valid.device
        q_idx = torch.arange(k_len - q_len, k_len, device=dev)
        causal = torch.arange(k_len, device=dev)[None, :] <= q_idx[:, None]
        allowed = lay.valid[:, None, :] & causal[None]
        log_size = lay.log_first if first else lay.log_size
        if self.phase == "prefill" and q_len == k_len:
            bias = calibration_bias(
                self.rope, lay.positions, lay.positions, log_size, lay.calibrated, lay.c, lay.distance
            )
        else:
            # Decoding: the distance term needs prefill query positions; keep the size term.
            bias = torch.where(lay.calibrated, log_size, 0.0)[:, None, :].expand(-1, q_len, -1)
        mask = torch.where(allowed, bias, torch.finfo(dtype).min).to(dtype)
        return mask[:, None]

    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scaling: float,
               groups: int) -> None:
        """Keep what the stage after `layer` needs: attention rows of a few queries, the keys; never L x L."""
        needs = self.stages.needs(layer + 1)
        rec = LayerRecord()
        keys = repeat_kv(key, groups) if groups > 1 and needs & {"row", "text"} else key
        if "row" in needs:
            rec.row = attention_rows(query[:, :, -1:], keys, mask[:, :, -1:], scaling)[:, 0]
        if "text" in needs:
            index, valid = self.stages.text_queries()
            index = index.to(query.device)
            q = query.gather(2, index[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3]))
            m = mask.gather(2, index[:, None, :, None].expand(-1, 1, -1, mask.shape[3]))
            rec.text, rec.text_index, rec.text_valid = attention_rows(q, keys, m, scaling), index, valid
        if "keys" in needs:
            rec.keys = key.transpose(1, 2).reshape(key.shape[0], key.shape[2], -1)
        self.records[layer] = rec

    def before_layer(self, layer: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.phase != "prefill" or not self.stage_layers or layer < self.stage_layers[0]:
            return None
        if layer in self.stage_layers and layer not in self._stage_rope:
            hidden, layout, rope_args, position_ids = self.stages.build(layer, args[0], self.records[layer - 1])
            self.layouts.append(layout)
            self._stage_rope[layer] = (rope_args, position_ids)
            args = (hidden, *args[1:])
        stage = max(k for k in self.stage_layers if k <= layer)
        rope_args, position_ids = self._stage_rope[stage]
        kwargs = dict(kwargs)
        kwargs["position_embeddings"] = rope_args
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = position_ids
        return args, kwargs


_ACTIVE: ContextVar[ForwardContext | None] = ContextVar("restore_forward_context", default=None)


@contextlib.contextmanager
def active(ctx: ForwardContext | None) -> Iterator[ForwardContext | None]:
    token = _ACTIVE.set(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)


def restore_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA with the context's per-layer mask and calibration bias; plain SDPA without a context."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    layer = module.layer_idx
    mask = ctx.mask(layer, query.shape[2], key.shape[2], query.dtype)
    if ctx.phase == "prefill" and layer in ctx.row_layers:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        ctx.record(layer, query, key, mask, scale, getattr(module, "num_key_value_groups", 1))
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False, **kwargs
    )


def restore_mask(*args, **kwargs):
    """The stock SDPA mask, except while a context is active: `restore_attention` then builds its own masks
    and ignores this one, so building it (and the host sync its all-ones check costs) is skipped."""
    if _ACTIVE.get() is not None:
        return None
    return sdpa_mask(*args, **kwargs)


def _layer_pre_hook(layer: int):
    def hook(module, args, kwargs):
        ctx = _ACTIVE.get()
        return None if ctx is None else ctx.before_layer(layer, args, kwargs)

    return hook


def install(model, text_model) -> None:
    """Register the attention function and stage hooks on a loaded model (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, restore_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, restore_mask)
    if getattr(model, "_restore_installed", False):
        return
    model.set_attn_implementation({"text_config": ATTENTION_NAME, "vision_config": "sdpa"})
    for idx, layer in enumerate(text_model.layers):
        layer.register_forward_pre_hook(_layer_pre_hook(idx), with_kwargs=True)
    model._restore_installed = True
