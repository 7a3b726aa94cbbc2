"""`python -m pipelines.bench.serve_load`: the bounded load test against an in-process uvicorn server."""

from __future__ import annotations

import pytest

from pipelines.bench.serve_load import mix


def test_mix_is_ninety_percent_short_and_fixed():
    plan = mix(200)
    assert plan == mix(200)
    longs = [m for kind, m, _ in plan if kind == "long"]
    assert 10 <= len(longs) <= 30 and all(128 <= m <= 256 for m in longs)
    assert all(8 <= m <= 16 for kind, m, _ in plan if kind == "short")


@pytest.mark.serve
def test_load_test_script_reports_each_mode_and_the_cache_bound(tmp_path):
    from pipelines.bench.serve_load import main

    report = main(["--model", "random:llava-tiny", "--budget", "8", "--concurrency", "2", "--requests", "6",
                   "--cache-tokens", "160", "--cache-max-tokens", "4", "--out", str(tmp_path)])
    assert [(r["batching"], r["concurrency"], r["ok"]) for r in report["batching"]] == [
        ("static", 2, 6), ("continuous", 2, 6)
    ]
    shorts = [m for kind, m, _ in mix(6) if kind == "short"]
    assert all(r["short_tokens"] == sum(shorts) / len(shorts) for r in report["batching"])  # ignore_eos: all of max_tokens
    full, reduced = report["cache"]["results"]
    assert (full["kept_tokens"], reduced["kept_tokens"]) == (36, 8) and full["ok"] == reduced["ok"] == 6
    assert (tmp_path / "serve.json").exists() and "| continuous | 2 |" in (tmp_path / "serve.md").read_text()
