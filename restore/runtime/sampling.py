"""Per-step token choice for a batch whose rows each have their own decoding settings, and the per-request
host work of a step done incrementally: text deltas and stop strings.

`Sampler.choose` is one batched pass over the logits: greedy rows take the argmax; sampling rows get their
own temperature, top-k and top-p as (B,) tensors. A row with a seed draws from its own `torch.Generator`
(one multinomial per seeded row, so its draws never depend on its batchmates); unseeded sampling rows draw
together from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from restore.config import GenerationConfig


class Sampler:
    """The decoding settings of the rows of a batch, as tensors on `device`, in row order."""

    def __init__(self, configs: Sequence[GenerationConfig], generators: Sequence[torch.Generator | None], device) -> None:
        self.sample = [i for i, g in enumerate(configs) if g.do_sample]
        self.generators = list(generators)
        if self.sample:
            rows = [configs[i] for i in self.sample]
            self.rows = torch.tensor(self.sample, device=device)
            self.temperature = torch.tensor([g.temperature for g in rows], dtype=torch.float64, device=device)[:, None]
            self.top_k = torch.tensor([g.top_k for g in rows], device=device)
            self.top_p = torch.tensor([g.top_p for g in rows], device=device)
            self.max_k = max(g.top_k for g in rows)
            self.any_top_p = any(g.top_p < 1.0 for g in rows)
            unseeded = [j for j, i in enumerate(self.sample) if self.generators[i] is None]
            self.unseeded = torch.tensor(unseeded, device=device) if unseeded else None
            self.seeded = [(j, self.generators[i]) for j, i in enumerate(self.sample) if self.generators[i] is not None]

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) chosen token ids from (B, V) float logits."""
        tokens = logits.argmax(dim=-1)
        if not self.sample:
            return tokens
        # Shifted by the row maximum and in float64, so a vanishing temperature (1e-300) still gives the greedy
        # token probability 1 instead of inf/inf = NaN.
        picked = logits[self.rows].double()
        scores = (picked - picked.amax(dim=-1, keepdim=True)) / self.temperature
        vocab = scores.shape[-1]
        if self.max_k:
            top = torch.topk(scores, min(self.max_k, vocab), dim=-1).values
            kth = top.gather(1, (self.top_k.clamp(1, min(self.max_k, vocab)) - 1)[:, None])
            cut = (scores < kth) & (self.top_k > 0)[:, None]
            scores = scores.masked_fill(cut, float("-inf"))
        if self.any_top_p:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            probs = torch.softmax(sorted_scores, dim=-1)
            drop = ((probs.cumsum(dim=-1) - probs) > self.top_p[:, None]) & (self.top_p < 1.0)[:, None]
            scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        probs = torch.softmax(scores, dim=-1)
        drawn = torch.empty(len(self.sample), dtype=torch.long, device=logits.device)
        if self.unseeded is not None:
            drawn[self.unseeded] = torch.multinomial(probs[self.unseeded], 1)[:, 0]
        for j, generator in self.seeded:
            drawn[j] = torch.multinomial(probs[j : j + 1], 1, generator=generator)[0, 0]
        tokens[self.rows] = drawn
        return tokens


class Detokenizer:
    """Incremental detokenization: the text each new token adds, decoding only a short window of ids.

    `start` marks the first id of the window, `mark` the first id whose text was not yet given out: the text
    a new token adds is decode(ids[start:]) minus decode(ids[start:mark]). Decoding from a little before
    `mark` keeps the tokenizer's joins (spaces, merged bytes) exact; a delta that ends in an incomplete
    character ('\\ufffd') is held back until the bytes that complete it arrive.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0
        self.mark = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.start : self.mark], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.start :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.start, self.mark = self.mark, len(self.ids)
        return after[len(before) :]


class StopWatch:
    """Finds stop strings in a growing text, reading each delta once: it keeps only the last
    (longest stop - 1) characters, the most of a stop string that could have begun before a delta."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.tail = ""

    def hit(self, delta: str) -> bool:
        if not self.stops or not delta:
            return False
        window = self.tail + delta
        self.tail = window[-self.keep :] if self.keep else ""
        return any(s in window for s in self.stops)
