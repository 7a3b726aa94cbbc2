"""One request's reduction: which method, what budget, and how its spans are rectified."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel

from restore.config import ReductionConfig
from restore.methods import get_method
from restore.methods.base import Method
from restore.rectify.anchors import restore_assignment
from restore.sequence import SampleSeq
from restore.tokens import Assignment, ImageTokens

PAPER_DEPTH = 32  # LLaVA-1.5-7B's decoder layers, where the in-LLM methods' default layers were chosen


def validate(config: ReductionConfig) -> ReductionConfig:
    """`config` when its method is registered and its layer and options fit that method; else a ValueError
    naming the registered methods, the layer or the option at fault."""
    method = get_method(config.method)  # raises with the list of known names
    method.layers(config.layer, method.validate_options(config.options))
    if config.layer is not None and method.stage != "llm":
        raise ValueError(f"layer is only meaningful for in-LLM methods; {config.method!r} acts {method.stage}")
    return config


def scaled_layers(method: str, depth: int) -> dict:
    """ReductionConfig fields placing an in-LLM method's default layers at the same relative depth in a
    `depth`-layer model (distinct, ascending, within 1..depth-1); {} for pre-LLM methods."""
    m = get_method(method)
    if m.stage != "llm":
        return {}
    defaults = m.layers(None, m.validate_options({}))
    scaled = []
    for k in defaults:
        k = min(depth - 1, max(1, round(k * depth / PAPER_DEPTH)))
        scaled.append(max(k, scaled[-1] + 1) if scaled else k)
    if scaled[-1] >= depth:
        raise ValueError(f"{method}: {len(defaults)} stages do not fit a {depth}-layer model")
    if len(defaults) > 1:
        return {"options": {"layers": scaled}}
    return {"layer": scaled[0]}


def fit_layers(config: ReductionConfig, depth: int) -> ReductionConfig:
    """`config` for a `depth`-layer model: an in-LLM method left at its default layers gets them at their
    relative depth (FastV's K=2 of 32 is K=1 of 4); layers the config sets are kept as given."""
    if get_method(config.method).stage != "llm" or config.layer is not None or "layers" in config.options:
        return config
    fields = scaled_layers(config.method, depth)
    options = {**config.options, **fields.pop("options", {})}
    return ReductionConfig(**{**config.model_dump(), **fields, "options": options})


@dataclass(frozen=True)
class Plan:
    config: ReductionConfig
    method: Method
    options: BaseModel

    @staticmethod
    def of(config: ReductionConfig) -> Plan:
        method = get_method(validate(config).method)
        return Plan(config=config, method=method, options=method.validate_options(config.options))

    @property
    def reduces(self) -> bool:
        return self.config.reduces

    @property
    def in_llm(self) -> bool:
        return self.method.stage == "llm"

    @property
    def layers(self) -> list[int]:
        """Decoder layers that see a newly reduced sequence ([0] for pre-LLM methods)."""
        return self.method.layers(self.config.layer, self.options)

    def stage_budget(self, span, layer: int) -> int:
        """Tokens a span keeps at `layer`: the final budget at the last stage, geometric before it."""
        final = self.config.budget_for(span.origin_tokens, span.origin_frames)
        remaining = sum(1 for k in self.layers if k >= layer)
        if remaining <= 1 or final >= span.length:
            return final
        return max(final, min(span.length, round(span.length * (final / span.length) ** (1 / remaining))))

    def layer_lengths(self, seq: SampleSeq, depth: int) -> list[int]:
        """Tokens each of `depth` decoder layers will hold for `seq` (as it enters the LLM, after any pre-LLM
        reduction): its length up to each in-LLM stage, the stage's reduced length from there. Computed from
        the budgets alone, before the prefill, so a scheduler can count a request's KV cache in advance."""
        lengths = [seq.length] * depth
        if not (self.reduces and self.in_llm):
            return lengths
        spans = [replace(s, origin=(s.origin_tokens, s.origin_frames)) for s in seq.spans]
        total = seq.length
        for layer in self.layers:
            for i, span in enumerate(spans):
                n = self.stage_budget(span, layer)
                if n < span.length:
                    total -= span.length - n
                    spans[i] = replace(span, end=span.start + n)
            lengths[layer:] = [total] * max(0, depth - layer)
        return lengths

    def assignment(self, tokens: ImageTokens, n: int) -> Assignment:
        if self.config.restore.enabled:
            return restore_assignment(tokens, n, self.method, self.options, self.config.restore)
        return self.method.reduce(tokens, n, self.options)

    def apply(self, seq: SampleSeq, importances: list[torch.Tensor | None], layer: int = 0,
              layer_keys: list[torch.Tensor | None] | None = None,
              text_attention: list[torch.Tensor | None] | None = None) -> SampleSeq:
        """Reduce every span of `seq` at `layer` (features = its current embeds); unchanged if nothing shrinks.
        In-LLM stages also pass, per span, what layer-1 recorded (`ImageTokens.layer_keys`, `.text_attention`)."""
        none = [None] * len(seq.spans)
        assignments: list[Assignment | None] = []
        # The instruction: prompt text after the last visual span, in the LLM's input embedding space.
        wanted = seq.spans and not self.in_llm and self.method.uses_text(self.options)
        tail = seq.embeds[max(s.end for s in seq.spans) :] if wanted else None
        instruction = tail.detach().float().cpu() if tail is not None and tail.shape[0] > 0 else None
        for span, importance, lkeys, text_rows in zip(seq.spans, importances, layer_keys or none,
                                                      text_attention or none, strict=True):
            n = self.stage_budget(span, layer)
            if n >= span.length:
                assignments.append(None)
                continue
            tokens = ImageTokens(
                features=seq.embeds[span.start : span.end].detach().float().cpu(),
                importance=importance,
                keys=span.keys if not self.in_llm else None,
                grid=span.grid,
                text=instruction,
                layer_keys=lkeys,
                text_attention=text_rows,
            )
            a = self.assignment(tokens, n)
            if a.num_slots != n:
                raise RuntimeError(f"method {self.method.name!r} produced {a.num_slots} tokens for budget {n}")
            assignments.append(a)
        if all(a is None for a in assignments):
            return seq
        rc = self.config.restore
        if not rc.enabled:
            return seq.reduce(assignments, self.method.author_positions)
        out = seq.reduce(assignments, rc.positions)
        return replace(out, calibration=rc.calibration, c=rc.c, uniform_first_layer=rc.uniform_first_layer)
