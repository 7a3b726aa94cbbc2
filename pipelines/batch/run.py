"""`run(job)`: label every input of a `LabelJob` not yet in its output, exactly once, resumably.

Check the job on the driver (`checks`: nothing listed whole), check the output's
job marker (`commit`), set Ray Data's checkpoint config, and run the graph
(`graph`) into the part-file sink: listing, decode, inference and writes all
run in Ray tasks and actors; the driver only waits. Then write the summary.
`python -m jobs.label` and `restore label` call it.
"""

from __future__ import annotations

import logging
import time
import uuid

from pipelines.batch import commit
from pipelines.batch.checks import validate_before_start
from pipelines.batch.commit import JobSummary
from pipelines.batch.config import LabelJob
from pipelines.batch.graph import build_dataset
from pipelines.batch.listing import skipped_by_extension
from pipelines.media.decode import SourceError
from pipelines.media.storage import OutputStore

logger = logging.getLogger(__name__)


class JobInterrupted(RuntimeError):
    """Ctrl-C (or SIGINT) during a run: what was published and how to resume."""


def run(job: LabelJob) -> JobSummary:
    """Label every input not yet in the output (part files written by Ray Data write tasks); write the summary."""
    prepared = validate_before_start(job)  # raises JobConfigError before any Ray work
    job = prepared.job
    store = OutputStore(job.output, job.endpoint_url, job.storage_options)
    commit.check_marker(store, job)
    commit.seed_legacy_checkpoint(store, job)
    commit.remove_hidden_temporaries(store)
    rows_before = commit.committed_rows(job)
    limit = None if job.limit is None else max(0, job.limit - rows_before)
    run_id = uuid.uuid4().hex[:12]
    stats_dir = f"{job.output.rstrip('/')}/{commit.RUNS_DIR}/{run_id}"

    wall_s, written = 0.0, 0
    if limit != 0:
        import ray
        import ray.data

        if not ray.is_initialized():
            ray.init()  # joins $RAY_ADDRESS under `ray job submit`, else starts a local instance
        ctx = ray.data.DataContext.get_current()
        previous = ctx.checkpoint_config
        ctx.checkpoint_config = commit.checkpoint_config(job)
        t0 = time.perf_counter()  # after startup: wall_s covers listing, actor start-up, decode, inference, writes
        try:
            ds = build_dataset(job, prepared.units, prepared.questions, limit, stats_dir)
            ds.write_datasink(commit.part_sink(job))
        except ray.exceptions.RayTaskError as err:
            # An input the listing refused (a manifest's bad row or repeated id): its own message, without
            # the remote traceback Ray wraps around it.
            if isinstance(err.cause, SourceError):
                raise err.cause from None
            raise
        except KeyboardInterrupt:
            done = commit.committed_rows(job)
            raise JobInterrupted(
                f"interrupted: {store.uri} holds {done} labeled rows in whole part files ({done - rows_before} from "
                "this run); run the same command again to label the rest (committed rows are not redone)"
            ) from None
        finally:
            ctx.checkpoint_config = previous
        wall_s = time.perf_counter() - t0
        written = commit.committed_rows(job) - rows_before
    skipped = skipped_by_extension(stats_dir, job.endpoint_url, job.storage_options)
    summary = commit.summarize(store, job, rows_before, written, skipped, wall_s)
    store.write_atomic(commit.SUMMARY_FILE, summary.model_dump_json(indent=2).encode())
    logger.info("summary: %s", summary.model_dump_json())
    return summary
