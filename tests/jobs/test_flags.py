"""`jobs.flags`: the flags and budget parsing every subcommand shares."""

from __future__ import annotations

import argparse

import pytest

from jobs.flags import add_model_flags, add_reduction_flags, parse_budget, reduction_from_args


def test_budget_is_a_count_or_a_ratio():
    assert parse_budget("64") == 64 and isinstance(parse_budget("64"), int)
    assert parse_budget("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="token count .* or a ratio"):
        parse_budget("lots")


def test_reduction_flags_build_a_validated_config():
    p = argparse.ArgumentParser()
    add_model_flags(p, dtype=True)
    add_reduction_flags(p, knobs=("gamma", "positions"))
    args = p.parse_args(["--method", "divprune", "--budget", "0.5", "--no-restore", "--gamma", "0.25"])
    assert (args.model, args.device, args.dtype) == ("default", "cpu", "auto")
    r = reduction_from_args(args)
    assert (r.method, r.budget, r.restore.enabled, r.restore.gamma, r.restore.positions) == (
        "divprune", 0.5, False, 0.25, "median")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        reduction_from_args(p.parse_args(["--method", "nope"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--budget", "x"])


def test_job_flags_default_to_unset():
    p = argparse.ArgumentParser()
    add_model_flags(p, model=None, device=None)
    add_reduction_flags(p, method=None, restore=None)
    args = p.parse_args([])
    assert (args.model, args.method, args.budget, args.restore) == (None, None, None, None)
    assert not hasattr(args, "device") and not hasattr(args, "gamma")
    assert p.parse_args(["--no-restore"]).restore is False
