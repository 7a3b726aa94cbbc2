"""`restore serve` flags into ServeSettings and DeploymentSettings (nothing is started)."""

from __future__ import annotations

import argparse


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


def test_media_flags_set_the_fetch_policy():
    import pytest
    from pydantic import ValidationError

    from jobs.cli import build_parser
    from jobs.serve import settings_from_args
    from pipelines.media.fetch import FetchPolicy

    parse = build_parser().parse_args
    settings, _ = settings_from_args(parse(["serve", "--model", "random:llava-tiny"]))
    assert settings.fetch == FetchPolicy() and not settings.fetch.allow_s3  # no flags: the policy's defaults
    settings, _ = settings_from_args(parse([
        "serve", "--model", "random:llava-tiny", "--allow-s3", "s3://media-bucket/public/", "--allow-s3",
        "s3://other-bucket/img/", "--max-image-side", "4096", "--max-aspect", "8.5"]))
    f = settings.fetch
    assert f.allow_s3 and f.s3_allow == ["s3://media-bucket/public/", "s3://other-bucket/img/"]
    assert (f.max_side, f.max_aspect, f.max_pixels) == (4096, 8.5, FetchPolicy().max_pixels)
    with pytest.raises(ValidationError, match="s3_allow entry"):
        settings_from_args(parse(["serve", "--model", "random:llava-tiny", "--allow-s3", "s3://b/../x/"]))
    with pytest.raises(ValidationError, match="max_aspect"):
        settings_from_args(parse(["serve", "--model", "random:llava-tiny", "--max-aspect", "0.5"]))
    from jobs.serve import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    assert f"default {FetchPolicy().max_side}" in helps["max_image_side"]
    assert f"default {FetchPolicy().max_aspect}" in helps["max_aspect"] and "s3://" in helps["allow_s3"]


def test_scheduler_flags_set_the_serve_settings():
    from jobs.cli import build_parser
    from jobs.serve import settings_from_args
    from pipelines.serve.settings import ServeSettings

    parse = build_parser().parse_args
    settings, _ = settings_from_args(parse(["serve", "--model", "random:llava-tiny"]))
    defaults = ServeSettings()
    assert (settings.max_batch_tokens, settings.max_running, settings.request_timeout_s) == (
        defaults.max_batch_tokens, defaults.max_running, defaults.request_timeout_s)
    settings, _ = settings_from_args(parse(["serve", "--model", "random:llava-tiny", "--max-batch-tokens", "2048",
                                            "--max-running", "4", "--request-timeout", "30"]))
    assert (settings.max_batch_tokens, settings.max_running, settings.request_timeout_s) == (2048, 4, 30)
