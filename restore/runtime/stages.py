"""In-LLM reduction stages of one prefill (DESIGN §2 step 5).

Methods such as FastV and PyramidDrop reduce at decoder layer K from the hidden
states entering it. `Stages` holds what that needs for the whole batch: each
sample's plan, its current sequence and the batch layout, and the lengths each
sample had after each of its stages (for the per-layer token record). The
attention context calls `build` before the first layer of each stage with the
hidden states and the attention row recorded at layer K-1.
"""

from __future__ import annotations

import torch

from restore.plan import Plan
from restore.runtime.layout import Layout, pad_batch, unpad
from restore.sequence import SampleSeq


class Stages:
    def __init__(self, adapter, plans: list[Plan], seqs: list[SampleSeq], layout: Layout) -> None:
        self.adapter = adapter
        self.plans = plans
        self.seqs = seqs  # each sample's sequence as the current stage holds it
        self.layout = layout
        self.layers = sorted({k for p in plans if p.reduces and p.in_llm for k in p.layers})
        self.lengths: list[dict[int, int]] = [{} for _ in seqs]  # per sample: stage layer -> length from there

    def build(self, layer: int, hidden: torch.Tensor, rows: torch.Tensor):
        """Reduce the samples whose in-LLM method acts at `layer`, from `hidden` (B, L, d) entering it and
        `rows` (B, L), the last prompt token's attention at layer-1. Returns the new hidden states, their
        layout, the rotary arguments and position ids of the stage."""
        old = self.layout
        current = unpad(hidden, old, self.seqs)
        out: list[SampleSeq] = []
        first_here = []
        for b, (seq, plan) in enumerate(zip(current, self.plans, strict=True)):
            if plan.reduces and plan.in_llm and layer in plan.layers:
                offset = old.length - seq.length
                imps = [rows[b, offset + s.start : offset + s.end].float().cpu() for s in seq.spans]
                new = plan.apply(seq, imps, layer)
                first_here.append(new is not seq)
                out.append(new)
                self.lengths[b][layer] = new.length
            else:
                first_here.append(False)
                out.append(seq)
        new_hidden, layout = pad_batch(out, layer, first_here, hidden.device)
        position_ids = self.adapter.position_ids(layout.positions)
        rope_args = self.adapter.text_model.rotary_emb(new_hidden, position_ids)
        self.seqs, self.layout = out, layout
        return new_hidden, layout, rope_args, position_ids

    def layer_tokens(self, first: list[int], depth: int) -> list[list[int]]:
        """Per sample, the tokens each decoder layer ran on: `first[b]` from layer 0 (after any pre-LLM
        reduction), then each in-LLM stage's length from its layer on; layers before an in-LLM method's K
        ran at full length."""
        out = []
        for n, by_layer in zip(first, self.lengths, strict=True):
            lengths, current = [], n
            for layer in range(depth):
                current = by_layer.get(layer, current)
                lengths.append(current)
            out.append(lengths)
        return out
