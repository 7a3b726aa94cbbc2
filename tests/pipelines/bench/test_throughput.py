
"""`python -m pipelines.bench.throughput` end to end on a few images: table and JSON schema, never timings.

It runs in its own interpreter because the benchmark starts and stops its own local Ray.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[3]


def test_throughput_benchmark_writes_both_sides_of_both_configs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.bench.throughput", "--images", "24", "--max-new-tokens", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| config | kept tokens |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["images"] == 24 and report["batch_size"] == 8
    for name, kept in (("full", 576), ("reduced", 64)):
        r = report["configs"][name]
        for side in ("loop", "pipeline"):
            side_r = r[side]
            assert side_r["mean_kept_tokens"] == kept, (name, side)
            # Three batches of 8: the steady rate covers those after the first, whose wait is its own field. An
            # actor runs two batches at once, so with only two they can finish in the same millisecond (no rate);
            # the third starts when one returns.
            assert side_r["steady_items_per_s"] > 0 and side_r["first_batch_s"] > 0
            assert side_r["items_per_s"] > 0
        assert r["pipeline_over_loop"] > 0 and r["pipeline_over_loop_steady"] > 0
    assert set(report["reduced_over_full"]) == {"loop", "pipeline"}
