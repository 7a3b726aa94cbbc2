"""The Grafana dashboard reads only metrics the replicas export (`pipelines.serve.metrics`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.serve import metrics

DASHBOARD = Path(__file__).parents[3] / "infra" / "grafana-restore-serve.json"


def test_dashboard_queries_exported_metrics():
    doc = json.loads(DASHBOARD.read_text())
    exported = set(re.findall(r"`(restore_\w+)`", metrics.__doc__))
    used = {m.removesuffix("_bucket") for p in doc["panels"] for t in p["targets"]
            for m in re.findall(r"ray_(restore_\w+)", t["expr"])}
    assert used and used <= exported, used - exported
    assert {"restore_requests_total", "restore_cache_tokens_in_use", "restore_prefill_speedup"} <= used
