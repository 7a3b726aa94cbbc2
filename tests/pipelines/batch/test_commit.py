"""`pipelines.batch.commit`: the job marker, part file names, the streamed summary, the legacy layout."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch import commit
from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.media.storage import OutputStore
from pipelines.rows import OUTPUT_SCHEMA


def row(i: int, prefill: float, full: float | None, status: str = "ok") -> dict:
    return {f.name: None for f in OUTPUT_SCHEMA} | {
        "id": f"r{i}", "uri": f"u{i}", "status": status, "visual_tokens": 576, "kept_tokens": 64,
        "prefill_ms": prefill, "full_prefill_ms_est": full}


def test_summary_streams_part_files_including_those_written_before_the_estimate_column(tmp_path):
    # An output resumed across releases holds parts without full_prefill_ms_est; the summary must
    # still read them, and estimate the speedup from the rows that have the column.
    out = tmp_path / "out"
    out.mkdir()
    old_schema = pa.schema([f for f in OUTPUT_SCHEMA if f.name != "full_prefill_ms_est"])
    old = [{k: v for k, v in row(0, 10.0, None).items() if k != "full_prefill_ms_est"}]
    pq.write_table(pa.Table.from_pylist(old, schema=old_schema), out / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([row(1, 10.0, 40.0), row(2, 30.0, 80.0), row(3, 0, None, "error")],
                                        schema=OUTPUT_SCHEMA), out / "part-abc-000001.parquet")
    job = LabelJob(kind="images", input=str(tmp_path), output=str(out), method="divprune", budget=64)
    s = commit.summarize(OutputStore(str(out)), job, rows_before=0, run_rows=2, skipped=5, wall_s=1.0)
    assert (s.rows_total, s.rows_ok, s.rows_error, s.parts_total) == (4, 3, 1, 2)
    assert s.mean_prefill_ms == pytest.approx(50 / 3) and s.mean_kept_tokens == 64
    assert s.prefill_speedup_est == 3.0  # (40 + 80) / (10 + 30): the old row has no estimate
    assert (s.skipped_by_extension, s.items_per_s) == (5, 2.0)


def test_marker_refuses_another_job_but_not_over_an_output_without_rows(tmp_path):
    out = tmp_path / "out"
    store = OutputStore(str(out))
    job = LabelJob(kind="images", input=str(tmp_path), output=str(out), method="divprune", budget=64)
    commit.check_marker(store, job)
    assert json.loads((out / "_restore" / "job.json").read_text())["fingerprint"]["method"] == "divprune"
    commit.check_marker(store, job.model_copy(update={"limit": 5, "shard_size": 3}))  # these change no row
    # A job that failed before writing anything (e.g. a bad model) does not lock its output.
    fixed = job.model_copy(update={"method": "visionzip"})
    commit.check_marker(store, fixed)
    pq.write_table(pa.Table.from_pylist([row(1, 1.0, 2.0)], schema=OUTPUT_SCHEMA), out / "part-x-000000.parquet")
    with pytest.raises(JobConfigError, match="different job.*method"):
        commit.check_marker(store, job)


def test_legacy_output_marker_and_shards_seed_the_checkpoint(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = LabelJob(kind="images", input=str(tmp_path), output=str(out), method="divprune", budget=64)
    fp = job.output_fingerprint() | {"shard_size": 256, "limit": None}
    (out / "_JOB.json").write_text(json.dumps({"fingerprint": fp, "rows": 2, "shards": 1, "ids_sha1": "x"}))
    pq.write_table(pa.Table.from_pylist([row(1, 1.0, 2.0), row(2, 1.0, 2.0)], schema=OUTPUT_SCHEMA),
                   out / "part-00000.parquet")
    store = OutputStore(str(out))
    commit.check_marker(store, job)
    with pytest.raises(JobConfigError, match="different job"):
        OutputStore(str(out)).remove(commit.JOB_FILE) or commit.check_marker(store, job.model_copy(
            update={"budget": 32}))
    assert commit.seed_legacy_checkpoint(store, job) == 2
    assert commit.seed_legacy_checkpoint(store, job) == 0  # once
    assert commit.committed_rows(job) == 2


def test_part_names_are_a_function_of_write_uuid_and_task():
    names = commit.part_filenames()
    a = names.get_filename_for_task("0123456789abcdef-x", 3)
    assert a == names.get_filename_for_task("0123456789abcdef-x", 3) == "part-0123456789ab-000003.parquet"
    assert a != names.get_filename_for_task("fedcba9876543210", 3)
