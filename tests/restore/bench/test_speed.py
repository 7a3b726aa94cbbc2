"""`restore bench speed` end to end on the tiny architecture: files and JSON schema, never timings."""

import json

from jobs.cli import main as cli_main
from restore.bench.speed import kv_cache_bytes
from restore.flops import decoder_layer_flops

NUMBERS = {
    "prefill_ms": float, "prefill_ms_min": float, "prefill_ms_max": float, "prefill_speedup": float,
    "flops_bound": float, "bound_fraction": float, "decode_tokens_per_s": float, "decode_tokens_per_s_min": float,
    "decode_tokens_per_s_max": float, "requests_per_s": float, "requests_per_s_min": float,
    "requests_per_s_max": float, "peak_memory_bytes": int, "kv_cache_bytes": int, "batch_size": int,
}


def test_speed_benchmark_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "speed"
    code = cli_main(["bench", "speed", "--arch", "llava-tiny", "--runs", "2,1", "--batch-sizes", "1,2", "--budgets", "8",
                     "--methods", "visionzip,fastv", "--max-new-tokens", "2", "--threads", "1", "--out", str(out)])
    assert code == 0
    assert (out / "speed.md").read_text().count("\n| ") == 1 + 10  # header, 5 settings x 2 batch sizes
    assert (out / "speed.png").stat().st_size > 0
    assert "| method |" in capsys.readouterr().out
    report = json.loads((out / "speed.json").read_text())
    assert isinstance(report["device"], str) and report["arch"] == "llava-tiny" and report["scale"] == 1.0
    rows = report["results"]
    assert len(rows) == 10
    assert report["runs"] == {"1": 2, "2": 1}  # one count per batch size
    assert {r["batch_size"]: r["runs"] for r in rows} == {1: 2, 2: 1}
    assert {(r["method"], r["budget"], r["restore"], r["batch_size"]) for r in rows} == {
        (m, b, on, bs) for bs in (1, 2) for m, b, on in
        [("none", None, False), ("visionzip", 8, False), ("visionzip", 8, True), ("fastv", 8, False), ("fastv", 8, True)]
    }
    for r in rows:
        for key, kind in NUMBERS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["generated_tokens"] == 2  # EOS is off: every request generates max_new_tokens
        assert r["kept_tokens"] == (36 if r["budget"] is None else 8)
        if r["budget"] is None:
            assert r["flops_bound"] == 1.0 and r["prefill_speedup"] == 1.0
        else:
            assert r["flops_bound"] > 1.0
        assert (r["restore_overhead"] is None) == (not r["restore"])
    by = {(r["method"], r["restore"], r["batch_size"]): r for r in rows}
    # FastV keeps every token before its layer, so its cache and bound sit between full and VisionZip's.
    assert by[("visionzip", False, 1)]["kv_cache_bytes"] < by[("fastv", False, 1)]["kv_cache_bytes"]
    assert by[("fastv", False, 1)]["kv_cache_bytes"] < by[("none", False, 1)]["kv_cache_bytes"]
    assert by[("none", False, 2)]["kv_cache_bytes"] == 2 * by[("none", False, 1)]["kv_cache_bytes"]
    assert by[("visionzip", False, 1)]["flops_bound"] > by[("fastv", False, 1)]["flops_bound"]


def test_runs_must_match_the_batch_sizes(capsys):
    import pytest

    from restore.bench.speed import parse_args

    assert parse_args(["--runs", "3", "--batch-sizes", "1,4"]).runs == {1: 3, 4: 3}
    with pytest.raises(SystemExit):
        parse_args(["--runs", "3,2,1", "--batch-sizes", "1,4"])
    assert "one per batch size" in capsys.readouterr().err


def test_flops_and_kv_cache_follow_the_shapes():
    s = {"hidden": 8, "intermediate": 16, "layers": 4, "heads": 2, "kv_heads": 1, "head_dim": 4}
    # q,o: 2nd^2; k,v with one 4-wide kv head: 2n*d*4; attention 2n^2 d; SwiGLU 3ndm.
    assert decoder_layer_flops(10, s) == 2 * 10 * 64 + 2 * 10 * 8 * 4 + 2 * 100 * 8 + 3 * 10 * 8 * 16
    import torch

    assert kv_cache_bytes([9] * 4, s, torch.float32) == 4 * 9 * 2 * 1 * 4 * 4
