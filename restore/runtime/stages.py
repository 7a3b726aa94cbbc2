"""In-LLM reduction stages of one prefill (DESIGN §2 step 5).

Methods such as FastV and PyramidDrop reduce at decoder layer K from the hidden
states entering it. `Stages` holds what that needs for the whole batch: each
sample's plan, its current sequence and the batch layout, and the lengths each
sample had after each of its stages (for the per-layer token record). The
attention context calls `build` before the first layer of each stage with the
hidden states and what layer K-1 recorded for it (`restore.runtime.attention.LayerRecord`: the last prompt
token's attention row, the layer's keys, the text tokens' attention rows, each only when a method acting at K
asks for it).
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

    def _acting(self, plan: Plan, layer: int) -> bool:
        return plan.reduces and plan.in_llm and layer in plan.layers

    def needs(self, layer: int) -> set[str]:
        """What layer-1 must record for the methods acting at `layer`: 'row', 'keys', 'text'."""
        out = set()
        for plan in self.plans:
            if self._acting(plan, layer):
                m = plan.method
                out |= {k for k, on in (("row", m.needs_importance), ("keys", m.needs_layer_keys),
                                        ("text", m.needs_text_attention)) if on}
        return out

    def text_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) padded positions of each sample's text tokens after its first visual span, in the current
        layout, and (B, T) which are real (samples with fewer repeat their last position)."""
        per_sample = []
        for seq in self.seqs:
            offset = self.layout.length - seq.length
            visual = torch.zeros(seq.length, dtype=torch.bool)
            for s in seq.spans:
                visual[s.start : s.end] = True
            first = seq.spans[0].end if seq.spans else seq.length
            text = torch.nonzero(~visual[first:]).flatten() + first + offset
            per_sample.append(text if text.numel() else torch.tensor([self.layout.length - 1]))
        width = max(t.numel() for t in per_sample)
        index = torch.stack([torch.cat([t, t[-1:].expand(width - t.numel())]) for t in per_sample])
        valid = torch.arange(width)[None, :] < torch.tensor([t.numel() for t in per_sample])[:, None]
        return index, valid

    def build(self, layer: int, hidden: torch.Tensor, record):
        """Reduce the samples whose in-LLM method acts at `layer`, from `hidden` (B, L, d) entering it and
        `record` (a `LayerRecord` of layer-1). Returns the new hidden states, their layout, the rotary
        arguments and position ids of the stage."""
        old = self.layout
        current = unpad(hidden, old, self.seqs)
        out: list[SampleSeq] = []
        first_here = []
        for b, (seq, plan) in enumerate(zip(current, self.plans, strict=True)):
            if self._acting(plan, layer):
                offset = old.length - seq.length
                cols = [slice(offset + s.start, offset + s.end) for s in seq.spans]
                imps = [None if record.row is None else record.row[b, c].float().cpu() for c in cols]
                keys = [None if record.keys is None else record.keys[b, c].float().cpu() for c in cols]
                text = [None if record.text is None else self._text_rows(record, b, c) for c in cols]
                new = plan.apply(seq, imps, layer, layer_keys=keys, text_attention=text)
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

    @staticmethod
    def _text_rows(record, b: int, cols: slice) -> torch.Tensor:
        """(T, N) attention of sample b's text tokens after the span `cols` on the span's tokens."""
        after = record.text_valid[b].to(record.text_index.device) & (record.text_index[b] >= cols.stop)
        return record.text[b][after.to(record.text.device)][:, cols].float().cpu()

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
