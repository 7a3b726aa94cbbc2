"""Configs validated at the edge: budgets, RESTORE knobs, and device/dtype resolved once by ModelConfig."""

import pytest
import torch

from restore.config import GenerationConfig, ModelConfig, ReductionConfig, RestoreConfig


def test_budgets_are_ints_or_ratios():
    assert ReductionConfig(method="random", budget=64).budget_for(576) == 64
    assert ReductionConfig(method="random", budget=0.25).budget_for(576) == 144
    assert ReductionConfig(method="random", budget=8).budget_for(36, frames=4) == 32  # per frame
    assert ReductionConfig(method="random", budget=4.0).budget == 4  # a whole float is a count
    assert ReductionConfig(budget=8).budget_for(36) == 36  # method none keeps all
    for bad in (0, -1, 1.5, True, False):
        with pytest.raises(ValueError, match="budget"):
            ReductionConfig(method="random", budget=bad)
    with pytest.raises(ValueError, match="larger than the 36 visual tokens"):
        ReductionConfig(method="random", budget=64, strict_budget=True).budget_for(36)


def test_unknown_fields_and_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="extra"):
        RestoreConfig(gama=0.5)
    with pytest.raises(ValueError, match="c"):
        RestoreConfig(c=1.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0)


def test_model_config_resolves_device_and_dtype_once():
    assert ModelConfig(device="cpu").torch_dtype() == torch.float32
    assert ModelConfig(device="cpu", dtype="bfloat16").torch_dtype() == torch.bfloat16
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ModelConfig(device="auto").resolved_device() == expected
    assert ModelConfig(device="cuda:1", dtype="auto").torch_dtype() == torch.bfloat16
