"""The plan layer: method checks at the edge, in-LLM layers placed at relative depth, stage budgets."""

import pytest

from restore.config import ReductionConfig
from restore.plan import Plan, scaled_layers, validate
from restore.sequence import Span


def test_validate_names_the_registered_methods_and_the_field_at_fault():
    assert validate(ReductionConfig(method="divprune", budget=8)).method == "divprune"
    with pytest.raises(ValueError, match="unknown method 'nope'; registered methods: .*divprune"):
        validate(ReductionConfig(method="nope"))
    with pytest.raises(ValueError, match="layer is only meaningful for in-LLM methods"):
        validate(ReductionConfig(method="divprune", budget=8, layer=2))
    with pytest.raises(ValueError, match="invalid options for method 'pyramiddrop'"):
        validate(ReductionConfig(method="pyramiddrop", budget=8, options={"nope": 1}))
    with pytest.raises(ValueError, match="unknown method"):
        Plan.of(ReductionConfig(method="nope"))


def test_default_layers_keep_their_relative_depth():
    assert scaled_layers("fastv", 32) == {"layer": 2}
    assert scaled_layers("fastv", 4) == {"layer": 1}
    assert scaled_layers("pyramiddrop", 4) == {"options": {"layers": [1, 2, 3]}}
    assert scaled_layers("divprune", 4) == {}


def test_stage_budgets_shrink_geometrically_to_the_final_budget():
    plan = Plan.of(ReductionConfig(method="pyramiddrop", budget=4, options={"layers": [1, 2]}))
    span = Span(0, 36, grid=None)
    assert plan.stage_budget(span, 1) == 12  # round(36 * (4/36)^(1/2))
    assert plan.stage_budget(Span(0, 12, grid=None, origin=(36, 1)), 2) == 4
