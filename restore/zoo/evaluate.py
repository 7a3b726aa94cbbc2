"""Score an engine on synthetic-world items: exact-match accuracy per type, caption object F1."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable

from restore.config import ReductionConfig
from restore.request import Request
from restore.zoo import world

# Longest answer: a caption of 9 cells, at most 5 words each, 8 separators, then </s>.
MAX_NEW_TOKENS = {"caption": 56}
SHORT_ANSWER_TOKENS = 4


def request_for(it: world.Item, reduction: ReductionConfig | None) -> Request:
    if it.type == "motion":
        return Request(it.question, video=it.images, reduction=reduction)
    return Request(it.question, images=it.images, reduction=reduction)


def answer(engine, items: list[world.Item], reduction: ReductionConfig | None = None, batch_size: int = 16,
           progress: Callable[[int], None] | None = None) -> tuple[list[str], list[float]]:
    """Greedy answers in item order, and the visual tokens each request kept."""
    texts: list[str] = [""] * len(items)
    kept: list[float] = [0.0] * len(items)
    by_budget: dict[int, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_budget[MAX_NEW_TOKENS.get(it.type, SHORT_ANSWER_TOKENS)].append(i)
    for max_new, idx in by_budget.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            results = engine.generate([request_for(items[i], reduction) for i in chunk], max_new_tokens=max_new)
            for i, r in zip(chunk, results, strict=True):
                texts[i] = r.text
                kept[i] = r.stats.kept_tokens / max(1, len(items[i].images))
            if progress is not None:
                progress(len(chunk))
    return texts, kept


def score(items: list[world.Item], predictions: list[str]) -> dict:
    """{"accuracy": {type: float}, "caption_f1": float | None, "average": float, "average_se": float} over the
    types present. `average_se` is the standard error of the average: the types' item sets are independent, so
    the squared standard errors of their means add, divided by the number of types squared."""
    hits: dict[str, list[float]] = defaultdict(list)
    for it, pred in zip(items, predictions, strict=True):
        if it.type == "caption":
            hits["caption"].append(world.caption_f1(pred, it.answer))
        else:
            hits[it.type].append(float(world.normalise(pred) == world.normalise(it.answer)))
    accuracy = {t: sum(v) / len(v) for t, v in hits.items() if t != "caption"}
    f1 = sum(hits["caption"]) / len(hits["caption"]) if hits.get("caption") else None
    parts = list(accuracy.values()) + ([f1] if f1 is not None else [])
    variance = sum(_mean_variance(v) for v in hits.values())
    return {"accuracy": accuracy, "caption_f1": f1, "average": sum(parts) / len(parts) if parts else 0.0,
            "average_se": math.sqrt(variance) / len(parts) if parts else 0.0}


def _mean_variance(values: list[float]) -> float:
    """The variance of the mean of `values` (sample variance / n; 0 for fewer than two)."""
    return statistics.variance(values) / len(values) if len(values) > 1 else 0.0


def evaluate(engine, items: list[world.Item], reduction: ReductionConfig | None = None, batch_size: int = 16) -> dict:
    predictions, _ = answer(engine, items, reduction, batch_size)
    return score(items, predictions)
