"""`pipelines.batch.checks`: what the driver checks before Ray starts, without Ray."""

from __future__ import annotations

import pytest

from pipelines.batch.checks import absolute, validate_before_start
from pipelines.batch.config import JobConfigError, LabelJob


def test_relative_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.png").write_bytes(b"x")
    (tmp_path / "m").mkdir()
    job = LabelJob(kind="images", input="corpus", output="out", model="m", task="vqa", questions="q.jsonl")
    got = absolute(job)
    assert (got.input, got.output, got.questions, got.model) == (
        str(tmp_path / "corpus"), str(tmp_path / "out"), str(tmp_path / "q.jsonl"), str(tmp_path / "m"))
    same = absolute(LabelJob(kind="images", input="s3://b/x", output="s3://b/y", model="org/name"))
    assert (same.input, same.output, same.model) == ("s3://b/x", "s3://b/y", "org/name")  # a hub id stays


def test_a_hub_model_missing_from_the_local_cache_fails_before_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    job = LabelJob(kind="images", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                   model="no-such-org/no-such-model")
    with pytest.raises(JobConfigError, match="no-such-org/no-such-model"):
        validate_before_start(job)
    assert not (tmp_path / "out").exists()  # the model is checked before the output is touched
    ok = validate_before_start(job.model_copy(update={"model": "random:llava-tiny"}))
    assert ok.job.input == str(tmp_path / "in") and ok.units and ok.questions is None
