"""Exactly-once output of the labeling job: deterministic shards, a job marker, whole-file publishing.

Commit protocol (exactly-once output, resumable; `pipelines.batch.run` drives it):

1. Listing. `checks.validate_before_start` lists the input (sorted by uri,
   `limit` applied, vqa questions fanned out); every row has a stable id (the
   manifest's, or sha1(uri)[:16], plus a question suffix).
2. Shards. Rows sorted by id are cut into shards of `shard_size`; shard k is
   published as `part-{k:05d}.parquet`. The split is a pure function of the
   listing and `shard_size`, so a rerun computes the same shards.
3. Job marker. `_JOB.json` records the output-affecting fields, the row count
   and a digest of the ids. A rerun on an output whose marker differs stops
   before any Ray work (mixing two jobs' rows in one output is never right).
4. Skip. Shards whose part file already exists are done; only the rows of the
   other shards enter the Ray Data graph.
5. Collect. The driver consumes the dataset (output rows are small) and keeps
   rows per shard keyed by id, so a row delivered twice (a retried task after
   an actor restart) overwrites itself instead of duplicating; rows of a shard
   already published are ignored.
6. Publish. When a shard has every one of its ids, it is written whole: local
   files go to a hidden temporary name in the same directory and are renamed
   with `os.replace`; S3 objects are one PUT of the whole body (written to an
   in-memory buffer first). Readers glob `part-*.parquet` and never see a
   partial file; a crash leaves each shard either published or absent.
7. Summary. `_SUMMARY.json` is rewritten at the end of every run from all part
   files (totals) and this run's timing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.media.storage import OutputStore
from pipelines.rows import OUTPUT_SCHEMA

logger = logging.getLogger(__name__)

PART = "part-{:05d}.parquet"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
JOB_FILE = "_JOB.json"
SUMMARY_FILE = "_SUMMARY.json"


class JobSummary(BaseModel):
    """What `run` did and what the output holds; also written as `_SUMMARY.json`."""

    output: str = Field(description="The output URI.")
    kind: str = Field(description="images or videos.")
    task: str = Field(description="caption or vqa.")
    model: str = Field(description="Model reference.")
    method: str = Field(description="Reduction method.")
    budget: float | None = Field(description="Budget (tokens per image, or a ratio).")
    restore: bool = Field(description="RESTORE requested.")
    rows_total: int = Field(description="Rows in all part files of the output.")
    rows_ok: int = Field(description="Rows with status ok in the output.")
    rows_error: int = Field(description="Rows with status error in the output.")
    shards_total: int = Field(description="Shards of the listing.")
    shards_written: int = Field(description="Shards published by this run.")
    shards_skipped: int = Field(description="Shards already published before this run (resume).")
    run_rows: int = Field(description="Rows labeled by this run.")
    wall_s: float = Field(description="Seconds this run spent in the Ray Data graph (0 when nothing was left).")
    items_per_s: float = Field(description="This run's rows (images or videos) per second of wall time.")
    mean_visual_tokens: float | None = Field(description="Mean visual tokens per ok row before reduction.")
    mean_kept_tokens: float | None = Field(description="Mean visual tokens per ok row the LLM saw.")
    mean_prefill_ms: float | None = Field(description="Mean prefill time of the batch an ok row was part of.")
    prefill_speedup_est: float | None = Field(
        description="Sum of full_prefill_ms_est / sum of prefill_ms over ok rows that have it (part files written "
        "before that column existed lack it): a row's full-token time is its measured prefill scaled by the "
        "decoder FLOPs with every visual token over those it ran (each layer at the length it saw, so an in-LLM "
        "method's layers before K count at full length)."
    )


def shard_rows(rows: list[dict], shard_size: int) -> list[list[dict]]:
    """The deterministic split: rows sorted by id, cut every `shard_size` rows."""
    ordered = sorted(rows, key=lambda r: r["id"])
    return [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]


class ShardCollector:
    """Rows per shard keyed by id; says when a shard holds all its ids (duplicates overwrite)."""

    def __init__(self, shards: dict[int, list[str]]) -> None:
        self.expected = {k: len(ids) for k, ids in shards.items()}
        self.shard_of = {i: k for k, ids in shards.items() for i in ids}
        self.rows: dict[int, dict[str, dict]] = defaultdict(dict)
        self.published: set[int] = set()

    def add(self, row: dict) -> int | None:
        """Keep `row`; return its shard index when that shard just became complete."""
        k = self.shard_of.get(row["id"])
        if k is None:
            raise RuntimeError(f"row id {row['id']!r} ({row.get('uri')}) is not in this run's listing")
        if k in self.published:
            logger.debug("late duplicate of %s for published shard %d ignored", row["id"], k)
            return None
        self.rows[k][row["id"]] = row
        return k if len(self.rows[k]) == self.expected[k] else None

    def take(self, k: int) -> list[dict]:
        """The complete shard's rows sorted by id; later rows of it are ignored."""
        self.published.add(k)
        return [r for _, r in sorted(self.rows.pop(k).items())]

    def incomplete(self) -> dict[int, int]:
        """Shard -> number of ids that never arrived."""
        return {k: n - len(self.rows.get(k, {})) for k, n in self.expected.items() if k not in self.published}


def _digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()


def check_marker(store: OutputStore, job: LabelJob, rows: list[dict], n_shards: int) -> None:
    """Write _JOB.json, or check that the one already there describes this job and listing."""
    marker = {
        "fingerprint": job.output_fingerprint(),
        "rows": len(rows),
        "shards": n_shards,
        "ids_sha1": _digest([r["id"] for r in rows]),
    }
    if store.exists(JOB_FILE):
        old = json.loads(store.read_bytes(JOB_FILE))
        if old != json.loads(json.dumps(marker)):
            diff = sorted(k for k in marker["fingerprint"] if old.get("fingerprint", {}).get(k) != marker["fingerprint"][k])
            what = f"fields {', '.join(diff)}" if diff else "the input listing"
            raise JobConfigError(
                f"output {store.uri} holds parts of a different job ({what} differ from {store.uri_of(JOB_FILE)}); "
                "use a new output, or delete that output to start over"
            )
        return
    store.write_atomic(JOB_FILE, json.dumps(marker, indent=2).encode())


def published_shards(store: OutputStore) -> set[int]:
    return {int(m.group(1)) for name in store.names("part-*.parquet") if (m := PART_RE.match(name))}


def write_shard(store: OutputStore, k: int, rows: list[dict]) -> str:
    """Publish shard k in one step (see the commit protocol); returns its URI."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), buf)
    name = PART.format(k)
    store.write_atomic(name, buf.getvalue())
    return store.uri_of(name)


def _read_columns(data: bytes, cols: list[str]) -> list[dict]:
    """Rows of `cols` from one part file; a column the file predates (an output resumed across releases) is None."""
    part = pq.ParquetFile(io.BytesIO(data))
    have = [c for c in cols if c in part.schema_arrow.names]
    return [{c: r.get(c) for c in cols} for r in part.read(columns=have).to_pylist()]


def summarize(store: OutputStore, job: LabelJob, n_shards: int, written: int, skipped: int, run_rows: int,
               wall_s: float) -> JobSummary:
    cols = ["status", "visual_tokens", "kept_tokens", "prefill_ms", "full_prefill_ms_est"]
    rows = [r for name in store.names("part-*.parquet") for r in _read_columns(store.read_bytes(name), cols)]
    ok = [r for r in rows if r["status"] == "ok"]

    def mean(key: str) -> float | None:
        return sum(r[key] for r in ok) / len(ok) if ok else None

    estimated = [r for r in ok if r["full_prefill_ms_est"] is not None]
    measured = sum(r["prefill_ms"] for r in estimated)
    full = sum(r["full_prefill_ms_est"] for r in estimated)
    return JobSummary(
        output=store.uri, kind=job.kind, task=job.task, model=job.model, method=job.method,
        budget=float(job.budget) if job.budget is not None else None, restore=job.restore,
        rows_total=len(rows), rows_ok=len(ok), rows_error=len(rows) - len(ok), shards_total=n_shards,
        shards_written=written, shards_skipped=skipped, run_rows=run_rows, wall_s=round(wall_s, 3),
        items_per_s=round(run_rows / wall_s, 3) if wall_s > 0 else 0.0,
        mean_visual_tokens=mean("visual_tokens"), mean_kept_tokens=mean("kept_tokens"),
        mean_prefill_ms=mean("prefill_ms"), prefill_speedup_est=round(full / measured, 3) if measured > 0 else None,
    )
