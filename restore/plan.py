"""One request's reduction: which method, what budget, and how its spans are rectified."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from pydantic import BaseModel

from restore.config import ReductionConfig
from restore.methods import get_method
from restore.methods.base import ImageTokens, Method
from restore.rectify.anchors import restore_assignment
from restore.rectify.assignment import Assignment
from restore.sequence import SampleSeq


@dataclass(frozen=True)
class Plan:
    config: ReductionConfig
    method: Method
    options: BaseModel

    @staticmethod
    def of(config: ReductionConfig) -> Plan:
        method = get_method(config.method)
        return Plan(config=config, method=method, options=method.validate_options(config.options))

    @property
    def reduces(self) -> bool:
        return self.config.reduces

    @property
    def in_llm(self) -> bool:
        return self.method.stage == "llm"

    @property
    def layer(self) -> int:
        """First decoder layer that sees the reduced sequence (0 for pre-LLM methods)."""
        if not self.in_llm:
            return 0
        return self.config.layer or self.method.default_layer or 1

    def assignment(self, tokens: ImageTokens, n: int) -> Assignment:
        if self.config.restore.enabled:
            return restore_assignment(tokens, n, self.method, self.options, self.config.restore)
        return self.method.reduce(tokens, n, self.options)

    def apply(self, seq: SampleSeq, importances: list[torch.Tensor | None]) -> SampleSeq:
        """Reduce every span of `seq` (features = its current embeds); unchanged if nothing shrinks."""
        assignments: list[Assignment | None] = []
        for span, importance in zip(seq.spans, importances, strict=True):
            n = self.config.budget_for(span.length, span.frames)
            if n >= span.length:
                assignments.append(None)
                continue
            tokens = ImageTokens(
                features=seq.embeds[span.start : span.end].detach().float().cpu(),
                importance=importance,
                keys=span.keys if not self.in_llm else None,
                grid=span.grid,
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
