"""`restore serve` flags into ServeSettings and DeploymentSettings (nothing is started)."""

from __future__ import annotations


def test_restore_serve_flags_build_valid_settings(monkeypatch):
    from jobs.cli import build_parser
    from jobs.serve import settings_from_args

    monkeypatch.setenv("RESTORE_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "--model", "random:llava-tiny", "--method", "visionzip", "--budget",
                                      "0.25", "--no-restore", "--max-replicas", "3", "--allow-host", "images.example"])
    settings, dep = settings_from_args(args)
    assert (settings.reduction.method, settings.reduction.budget, settings.reduction.restore.enabled) == (
        "visionzip", 0.25, False)
    assert settings.api_key == "from-env" and settings.fetch.allowed_hosts == ["images.example"]
    assert (dep.min_replicas, dep.max_replicas, dep.num_gpus) == (1, 3, 0.0)
    assert args.host == "127.0.0.1"
