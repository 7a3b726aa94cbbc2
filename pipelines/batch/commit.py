"""Exactly-once output of the labeling job: Ray Data's checkpointing, part files written by the workers.

Output layout (a Parquet dataset that pandas, pyarrow, polars and DuckDB read)::

    OUTPUT/part-<run>-<task>.parquet     rows (pipelines.rows.OUTPUT_SCHEMA), written by Ray Data write tasks
    OUTPUT/_restore/job.json             the job marker (output-affecting fields)
    OUTPUT/_restore/summary.json         the summary of the last run
    OUTPUT/_restore/checkpoint/          Ray Data's checkpoint: the ids written, one Parquet file per part file
    OUTPUT/_restore/journal/             the inference actors' crash journal (pipelines.batch.predictor)
    OUTPUT/_restore/runs/<run>/          per-run statistics of the listing tasks

Commit protocol (`pipelines.batch.run` drives it):

1. Marker. `_restore/job.json` records the fields that change what a row says.
   A run whose fields differ stops before any Ray work, unless the output holds
   no rows yet (a failed first attempt does not lock its output). An output of
   the previous release (top-level `_JOB.json`, `part-00000.parquet` shards) is
   still checked against, and its ids seed the checkpoint once.
2. Read with a filter. `DataContext.checkpoint_config` is a `CheckpointConfig`
   with `id_column="id"`; Ray Data loads the committed ids (a sorted array)
   and drops those rows right after the read, so a rerun labels only what is
   new (the listing may grow) and a rerun of a finished job labels nothing.
3. Two-phase write (Ray Data 2.60, file sinks): per write task, a pending
   checkpoint `<base>.pending.parquet` holding the task's ids is written
   first, then the part file, then the checkpoint is renamed to
   `<base>.parquet` (committed). `PartFilenames` makes `<base>` a pure
   function of (write uuid, task index), so a retried task rewrites the same
   name; on the next run, Ray deletes the part file of every pending
   checkpoint before loading the committed ids.
4. Whole files. `PartSink` writes a local part file under a hidden temporary
   name (`.part-...`) and renames it; an S3 part is one PUT (multipart
   completes atomically). Readers globbing `*.parquet`, and dataset readers
   (which skip `_` and `.` names), never see a partial file.
5. Summary. `_restore/summary.json` aggregates the part files' few numeric
   columns batch by batch with pyarrow (never all rows in Python).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.media.storage import OutputStore, filesystem, is_remote
from pipelines.rows import OUTPUT_SCHEMA

logger = logging.getLogger(__name__)

META = "_restore"
JOB_FILE = f"{META}/job.json"
SUMMARY_FILE = f"{META}/summary.json"
CHECKPOINT_DIR = f"{META}/checkpoint"
JOURNAL_DIR = f"{META}/journal"
RUNS_DIR = f"{META}/runs"
LEGACY_JOB_FILE = "_JOB.json"
LEGACY_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
PART_GLOB = "part-*.parquet"


class JobSummary(BaseModel):
    """What `run` did and what the output holds; also written as `_restore/summary.json`."""

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
    parts_total: int = Field(description="Part files in the output.")
    rows_before: int = Field(description="Rows the output held before this run (Ray Data's checkpoint).")
    run_rows: int = Field(description="Rows labeled by this run.")
    skipped_by_extension: int = Field(description="Files this run's folder/glob listing skipped by extension.")
    wall_s: float = Field(description="Seconds this run spent in the Ray Data graph.")
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


# ---------------------------------------------------------------------------- marker


def holds_rows(store: OutputStore) -> bool:
    """Whether the output holds any part file (of this release or the previous one)."""
    return bool(store.names(PART_GLOB))


def check_marker(store: OutputStore, job: LabelJob) -> None:
    """Write the job marker, or check that the one there describes this job (see the protocol, step 1)."""
    marker = {"fingerprint": job.output_fingerprint()}
    current = json.loads(json.dumps(marker))
    for name in (JOB_FILE, LEGACY_JOB_FILE):
        if not store.exists(name):
            continue
        old = json.loads(store.read_bytes(name))
        old_fp = old.get("fingerprint", {})
        # The previous release also recorded shard_size and limit, which no longer change a row.
        old_fp = {k: v for k, v in old_fp.items() if k in current["fingerprint"]}
        if old_fp == current["fingerprint"]:
            break
        if not holds_rows(store):
            logger.warning("output %s held the marker of a job that wrote nothing; replacing it", store.uri)
            break
        diff = sorted(k for k in current["fingerprint"] if old_fp.get(k) != current["fingerprint"][k])
        what = f"fields {', '.join(diff)}" if diff else "the job"
        raise JobConfigError(
            f"output {store.uri} holds parts of a different job ({what} differ from {store.uri_of(name)}); "
            "use a new output, or delete that output to start over"
        )
    store.write_atomic(JOB_FILE, json.dumps(marker, indent=2).encode())


# ---------------------------------------------------------------------------- checkpoint


def checkpoint_uri(job: LabelJob) -> str:
    return job.checkpoint_path or f"{job.output.rstrip('/')}/{CHECKPOINT_DIR}"


def checkpoint_config(job: LabelJob):
    """Ray Data's CheckpointConfig for this job (kept after success: incremental runs need the ids)."""
    import pyarrow.fs as pafs
    from ray.data.checkpoint import CheckpointConfig

    uri = checkpoint_uri(job)
    override = None
    if is_remote(uri) and job.endpoint_url:
        # pyarrow's S3FileSystem does not read AWS_ENDPOINT_URL in its constructor (FACTS.md).
        scheme, host = job.endpoint_url.split("://", 1)
        override = pafs.S3FileSystem(endpoint_override=host, scheme=scheme)
    return CheckpointConfig(id_column="id", checkpoint_path=uri, delete_checkpoint_on_success=False,
                            override_filesystem=override)


def committed_rows(job: LabelJob) -> int:
    """Rows whose checkpoint is committed (Parquet footers only; no ids are loaded)."""
    fs, root = filesystem(checkpoint_uri(job), job.endpoint_url, job.storage_options)
    fs.invalidate_cache()
    try:
        names = [n for n in fs.glob(f"{root.rstrip('/')}/*.parquet") if not n.endswith(".pending.parquet")]
    except FileNotFoundError:
        return 0
    total = 0
    for name in names:
        with fs.open(name, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def seed_legacy_checkpoint(store: OutputStore, job: LabelJob) -> int:
    """Ids of the previous release's shards (part-00000.parquet ...) as one committed checkpoint file, once."""
    legacy = [n for n in store.names(PART_GLOB) if LEGACY_PART_RE.match(n)]
    if not legacy:
        return 0
    fs, root = filesystem(checkpoint_uri(job), job.endpoint_url, job.storage_options)
    target = f"{root.rstrip('/')}/legacy-shards.parquet"
    if fs.exists(target):
        return 0
    ids = pa.concat_arrays([pq.read_table(store.fs.open(store.path(n), "rb"), columns=["id"])["id"].combine_chunks()
                            for n in legacy])
    fs.makedirs(root, exist_ok=True)
    with fs.open(target, "wb") as fh:
        pq.write_table(pa.table({"id": ids}), fh)
    logger.info("seeded the checkpoint with %d ids of %d shards of the previous release", len(ids), len(legacy))
    return len(ids)


def remove_hidden_temporaries(store: OutputStore) -> int:
    """Delete `.part-*` temporaries a killed local write left (hidden names; no reader sees them)."""
    if not store.local:
        return 0
    leftovers = store.names(".part-*")
    for name in leftovers:
        store.remove(name)
    return len(leftovers)


# ---------------------------------------------------------------------------- sink


def part_filenames():
    from ray.data.datasource import FilenameProvider

    class PartFilenames(FilenameProvider):
        """`part-<write uuid[:12]>-<task:06d>.parquet`: the same name when a task is retried, a new one per run."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{write_uuid.replace('-', '')[:12]}-{task_index:06d}.parquet"

    return PartFilenames()


def part_sink(job: LabelJob):
    """The Ray Data datasink of the part files (a file sink, so Ray's two-phase checkpoint commit applies)."""
    import posixpath

    from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
    from ray.data.datasource import BlockBasedFileDatasink

    class PartSink(BlockBasedFileDatasink):
        def write_block_to_file(self, block: Any, file: Any) -> None:
            pq.write_table(block.to_arrow().cast(OUTPUT_SCHEMA), file)

        def write_block(self, block: Any, block_index: int, ctx: Any) -> None:
            name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
            target = posixpath.join(self.path, name)
            if is_remote(self.unresolved_path):
                with self.open_output_stream(target) as fh:  # one PUT, or a multipart upload completed at once
                    self.write_block_to_file(block, fh)
                return
            tmp = posixpath.join(self.path, f".{name}.tmp")  # hidden: no glob or dataset reader sees it
            with self.open_output_stream(tmp) as fh:
                self.write_block_to_file(block, fh)
            self.filesystem.move(tmp, target)

    fs = None
    if is_remote(job.output) and job.endpoint_url:
        import pyarrow.fs as pafs

        scheme, host = job.endpoint_url.split("://", 1)
        fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme)
    return PartSink(job.output.rstrip("/"), filesystem=fs, filename_provider=part_filenames(),
                    min_rows_per_file=job.shard_size)


# ---------------------------------------------------------------------------- summary


def aggregate(store: OutputStore) -> dict[str, Any]:
    """Totals over all part files, scanned batch by batch over five columns (bounded memory)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    cols = ["status", "visual_tokens", "kept_tokens", "prefill_ms", "full_prefill_ms_est"]
    names = store.names(PART_GLOB)
    acc = {"rows": 0, "ok": 0, "visual": 0, "kept": 0, "prefill": 0.0, "est_prefill": 0.0, "est_full": 0.0,
           "parts": len(names)}
    if not names:
        return acc
    fs = store.fs
    # Parts written before full_prefill_ms_est existed lack it: the schema fills it with nulls.
    dataset = pads.dataset([store.path(n) for n in names], schema=OUTPUT_SCHEMA, format="parquet", filesystem=fs)
    for batch in dataset.to_batches(columns=cols, batch_size=65536):
        ok = pc.equal(batch["status"], "ok")
        acc["rows"] += batch.num_rows
        acc["ok"] += pc.sum(ok.cast(pa.int64())).as_py() or 0
        acc["visual"] += pc.sum(pc.filter(batch["visual_tokens"], ok)).as_py() or 0
        acc["kept"] += pc.sum(pc.filter(batch["kept_tokens"], ok)).as_py() or 0
        acc["prefill"] += pc.sum(pc.filter(batch["prefill_ms"], ok)).as_py() or 0.0
        has_est = pc.and_(ok, pc.is_valid(batch["full_prefill_ms_est"]))
        acc["est_prefill"] += pc.sum(pc.filter(batch["prefill_ms"], has_est)).as_py() or 0.0
        acc["est_full"] += pc.sum(pc.filter(batch["full_prefill_ms_est"], has_est)).as_py() or 0.0
    return acc


def summarize(store: OutputStore, job: LabelJob, rows_before: int, run_rows: int, skipped: int,
              wall_s: float) -> JobSummary:
    a = aggregate(store)
    ok = a["ok"]

    def mean(key: str) -> float | None:
        return a[key] / ok if ok else None

    return JobSummary(
        output=store.uri, kind=job.kind, task=job.task, model=job.model, method=job.method,
        budget=float(job.budget) if job.budget is not None else None, restore=job.restore,
        rows_total=a["rows"], rows_ok=ok, rows_error=a["rows"] - ok, parts_total=a["parts"], rows_before=rows_before,
        run_rows=run_rows, skipped_by_extension=skipped, wall_s=round(wall_s, 3),
        items_per_s=round(run_rows / wall_s, 3) if wall_s > 0 else 0.0,
        mean_visual_tokens=mean("visual"), mean_kept_tokens=mean("kept"), mean_prefill_ms=mean("prefill"),
        prefill_speedup_est=round(a["est_full"] / a["est_prefill"], 3) if a["est_prefill"] > 0 else None,
    )
