"""`run(job)`: label every input of a `LabelJob` not yet in its output, exactly once, resumably.

Check the job (`checks`), cut the listing into shards and check the output's job
marker (`commit`), run the Ray Data graph over the shards not yet published
(`graph`), publish each shard as soon as all its rows are back, and write the
summary. `python -m jobs.label` and `restore label` call it.
"""

from __future__ import annotations

import logging
import time

from pipelines.batch.checks import validate_before_start
from pipelines.batch.commit import (
    SUMMARY_FILE,
    JobSummary,
    ShardCollector,
    check_marker,
    published_shards,
    shard_rows,
    summarize,
    write_shard,
)
from pipelines.batch.config import LabelJob
from pipelines.batch.graph import build_dataset
from pipelines.media.storage import OutputStore

logger = logging.getLogger(__name__)


def run(job: LabelJob) -> JobSummary:
    """Label every input not yet in the output; publish shards as they complete; write _SUMMARY.json."""
    rows = validate_before_start(job)  # raises JobConfigError before any Ray work
    shards = shard_rows(rows, job.shard_size)
    store = OutputStore(job.output, job.endpoint_url, job.storage_options)
    check_marker(store, job, rows, len(shards))
    done = published_shards(store) & set(range(len(shards)))
    pending = {k: shard for k, shard in enumerate(shards) if k not in done}
    logger.info("%d rows in %d shards; %d already published, %d to do", len(rows), len(shards), len(done), len(pending))

    written, run_rows, wall_s = 0, 0, 0.0
    if pending:
        collector = ShardCollector({k: [r["id"] for r in shard] for k, shard in pending.items()})
        todo = [r for shard in pending.values() for r in shard]
        import ray

        if not ray.is_initialized():
            ray.init()  # joins $RAY_ADDRESS under `ray job submit`, else starts a local instance
        t0 = time.perf_counter()  # after startup: wall_s covers actor start-up, decode and inference
        for batch in build_dataset(job, todo).iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                k = collector.add(row)
                if k is not None:
                    shard_rows_k = collector.take(k)
                    uri = write_shard(store, k, shard_rows_k)
                    written += 1
                    run_rows += len(shard_rows_k)
                    logger.info("published %s (%d rows)", uri, len(shard_rows_k))
        wall_s = time.perf_counter() - t0
        missing = collector.incomplete()
        if missing:
            raise RuntimeError(
                f"shards {sorted(missing)} of {store.uri} are incomplete ({sum(missing.values())} rows never came "
                "back); they were not published — rerun the same job to finish them"
            )
    summary = summarize(store, job, len(shards), written, len(done), run_rows, wall_s)
    store.write_atomic(SUMMARY_FILE, summary.model_dump_json(indent=2).encode())
    logger.info("summary: %s", summary.model_dump_json())
    return summary
