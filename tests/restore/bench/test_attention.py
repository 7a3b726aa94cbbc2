"""`python -m restore.bench.attention` at tiny shapes on CPU: both paths run and agree on every setting."""

import json


def test_attention_bench_writes_both_paths_and_they_agree(tmp_path):
    from restore.bench.attention import main

    rows = main(["--device", "cpu", "--batch-sizes", "1,3", "--heads", "2", "--head-dim", "16", "--text", "6",
                 "--visual", "20", "--kept", "5", "--runs", "1", "--out", str(tmp_path)])
    assert [(r["batch"], r["tokens"]) for r in rows] == [(1, 26), (1, 11), (3, 26), (3, 11)]
    assert all(r["max_abs_diff"] < 1e-4 and r["dense_ms"] > 0 and r["flex_ms"] > 0 for r in rows)
    report = json.loads((tmp_path / "attention.json").read_text())
    assert report["results"] == rows and "| 3 | kept 5 | 11 |" in (tmp_path / "attention.md").read_text()
