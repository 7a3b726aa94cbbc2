"""`python -m restore.bench.batching` on a tiny model: the table and JSON, and both sides give the same answers
(continuous batching changes when rows run, never what they say); never timings."""

import json

from restore.bench.batching import main


def test_static_and_continuous_sides_answer_alike(tmp_path):
    report = main(["--model", "random:llava-tiny", "--images", "6", "--batch-size", "2", "--rounds", "1",
                   "--max-new-tokens", "5", "--budget", "8", "--out", str(tmp_path)])
    assert [r["setting"] for r in report["results"]] == ["full", "divprune+RESTORE@8"]
    for r in report["results"]:
        assert r["items"] == 6 and r["same_answers"] is True
        assert r["static_items_per_s"] > 0 and r["continuous_items_per_s"] > 0
    assert json.loads((tmp_path / "batching.json").read_text())["batch_size"] == 2
    assert "| divprune+RESTORE@8 |" in (tmp_path / "batching.md").read_text()
