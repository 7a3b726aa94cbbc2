"""`pipelines.batch.commit`: deterministic shards, the per-id collector, whole-file shards, the summary."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch import commit
from pipelines.batch.commit import ShardCollector
from pipelines.batch.config import LabelJob
from pipelines.rows import OUTPUT_SCHEMA


def test_summary_reads_part_files_written_before_the_estimate_column(tmp_path):
    # An output resumed across releases holds parts without full_prefill_ms_est; the summary must
    # still read them, and estimate the speedup from the rows that have the column.
    from pipelines.media.storage import OutputStore

    def row(i: int, prefill: float, full: float | None) -> dict:
        return {"id": f"r{i}", "uri": f"u{i}", "status": "ok", "visual_tokens": 576, "kept_tokens": 64,
                "prefill_ms": prefill, "full_prefill_ms_est": full}

    out = tmp_path / "out"
    out.mkdir()
    old_schema = pa.schema([f for f in OUTPUT_SCHEMA if f.name != "full_prefill_ms_est"])
    old = [{k: v for k, v in row(0, 10.0, None).items() if k != "full_prefill_ms_est"}]
    pq.write_table(pa.Table.from_pylist(old, schema=old_schema), out / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([row(1, 10.0, 40.0), row(2, 30.0, 80.0)], schema=OUTPUT_SCHEMA),
                   out / "part-00001.parquet")
    job = LabelJob(kind="images", input=str(tmp_path), output=str(out), method="divprune", budget=64)
    s = commit.summarize(OutputStore(str(out)), job, 2, 1, 1, 2, 1.0)
    assert (s.rows_total, s.rows_ok, s.mean_prefill_ms) == (3, 3, pytest.approx(50 / 3))
    assert s.prefill_speedup_est == 3.0  # (40 + 80) / (10 + 30): the old row has no estimate


def test_collector_overwrites_duplicates_and_ignores_late_rows():
    c = ShardCollector({0: ["a", "b"], 1: ["c"]})
    assert c.add({"id": "a", "answer": 1}) is None
    assert c.add({"id": "a", "answer": 2}) is None  # a retried task delivers "a" again
    assert c.add({"id": "b", "answer": 3}) == 0
    assert [r["answer"] for r in c.take(0)] == [2, 3]
    assert c.add({"id": "a", "answer": 4}) is None  # shard 0 is published; late copies are dropped
    assert c.incomplete() == {1: 1}
    with pytest.raises(RuntimeError, match="not in this run's listing"):
        c.add({"id": "zzz"})


def test_shards_are_a_pure_function_of_ids_and_size_and_publish_whole(tmp_path):
    from pipelines.media.storage import OutputStore

    rows = [{"id": i, "uri": f"u{i}"} for i in ("c", "a", "e", "b", "d")]
    shards = commit.shard_rows(rows, 2)
    assert [[r["id"] for r in s] for s in shards] == [["a", "b"], ["c", "d"], ["e"]]
    assert commit.shard_rows(list(reversed(rows)), 2) == shards
    store = OutputStore(str(tmp_path / "out"))
    assert commit.published_shards(store) == set()
    row = {f.name: None for f in OUTPUT_SCHEMA} | {"id": "a", "uri": "u", "status": "ok"}
    uri = commit.write_shard(store, 3, [row])
    assert uri.endswith("/part-00003.parquet") and commit.published_shards(store) == {3}
    assert pq.read_table(tmp_path / "out" / "part-00003.parquet").schema.equals(OUTPUT_SCHEMA)
