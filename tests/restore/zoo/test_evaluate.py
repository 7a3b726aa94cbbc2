"""Scoring world items: accuracy per type, caption F1, and the standard error of the average."""

import math

from restore.zoo import world
from restore.zoo.evaluate import score


def item(kind: str, answer: str) -> world.Item:
    return world.Item(kind, [], "q", answer)


def test_average_and_its_standard_error_by_hand():
    items = [item("count", "two")] * 4 + [item("glyph", "7")] * 2
    preds = ["two", "two", "three", "two", "7", "1"]
    result = score(items, preds)
    assert result["accuracy"] == {"count": 0.75, "glyph": 0.5}
    assert result["average"] == 0.625
    # count: sample variance of (1,1,0,1) is 0.25, / 4 items; glyph: of (1,0) is 0.5, / 2 items
    assert math.isclose(result["average_se"], math.sqrt(0.25 / 4 + 0.5 / 2) / 2)


def test_perfect_answers_have_no_spread():
    items = [item("existence", "yes"), item("existence", "no")]
    assert score(items, ["yes", "no"])["average_se"] == 0.0
