"""`restore bench accuracy` end to end with a tiny --n on a world model (fresh weights: this tests the
benchmark, not the model), and its pieces."""

import json

import pytest

from jobs.cli import main as cli
from restore.bench.accuracy import parse_budgets, table
from restore.plan import scaled_layers


def test_budgets_are_fractions_of_n_or_counts():
    assert parse_budgets("1/3,2/9,1/9", 576) == [192, 128, 64]
    assert parse_budgets("64, 0.5", 576) == [64, 288]
    with pytest.raises(ValueError, match="'1/1' gives 576 tokens"):
        parse_budgets("1/1", 576)
    with pytest.raises(ValueError, match="'half'"):
        parse_budgets("half", 576)


def test_in_llm_layers_scale_with_depth():
    assert scaled_layers("fastv", 32) == {"layer": 2}
    assert scaled_layers("fastv", 4) == {"layer": 1}
    assert scaled_layers("pyramiddrop", 32) == {"options": {"layers": [8, 16, 24]}}
    assert scaled_layers("pyramiddrop", 4) == {"options": {"layers": [1, 2, 3]}}
    assert scaled_layers("divprune", 4) == {}


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    from restore.zoo import architecture

    path = tmp_path_factory.mktemp("world-model")
    model, processor = architecture.build(seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_end_to_end_is_deterministic(tmp_path, world_model):
    args = ["bench", "accuracy", "--model", world_model, "--methods", "divprune,fastv", "--budgets", "1/9",
            "--n", "1", "--quiet"]
    assert cli(args + ["--out", str(tmp_path / "a")]) == 0
    assert cli(args + ["--out", str(tmp_path / "b"), "--restore", "both"]) == 0
    a = json.loads((tmp_path / "a" / "accuracy.json").read_text())
    assert a == json.loads((tmp_path / "b" / "accuracy.json").read_text())
    assert a["model"] == world_model and a["n"] == 1 and a["tokens_per_image"] == 576
    assert set(a["full"]["accuracy"]) == {"count", "position", "relation", "attribute", "existence", "glyph", "motion"}
    assert [(r["method"], r["budget"], r["restore"]) for r in a["results"]] == [
        ("divprune", 64, False), ("divprune", 64, True), ("fastv", 64, False), ("fastv", 64, True)
    ]
    for r in a["results"]:
        full = a["full"]["average"]
        assert r["kept_tokens"] == 64 and r["relative"] == (pytest.approx(r["average"] / full) if full else 0.0)
        assert 0 <= r["caption_f1"] <= 1 and set(r["accuracy"]) == set(a["full"]["accuracy"])
    assert a["results"][2]["layer"] == 1
    md = (tmp_path / "a" / "accuracy.md").read_text()
    assert "| divprune |" in md and " → " in md and md.strip() == table(a)
    assert (tmp_path / "a" / "accuracy.png").stat().st_size > 1000
