"""`python -m pipelines.bench.serve_load`: the bounded load test against an in-process uvicorn server."""

from __future__ import annotations

import pytest


@pytest.mark.serve
def test_load_test_script_reports_each_level(tmp_path):
    from pipelines.bench.serve_load import main

    report = main(["--model", "random:llava-tiny", "--budget", "8", "--concurrency", "1,2", "--requests", "2",
                   "--max-tokens", "2", "--out", str(tmp_path)])
    assert [(r["setting"], r["concurrency"], r["ok"]) for r in report["results"]] == [
        ("full", 1, 2), ("reduced", 1, 2), ("full", 2, 2), ("reduced", 2, 2)
    ]
    assert {r["kept_tokens"] for r in report["results"]} == {36, 8}
    assert (tmp_path / "serve.json").exists() and "| reduced | 2 |" in (tmp_path / "serve.md").read_text()
