"""The Ray Data graph of the labeling job (DESIGN §7: decode on CPU workers, overlapped with inference)::

    from_items(listing rows {id, uri, question})
      -> map_batches(decode.decode_batch)           CPU tasks: read (local/S3) + decode + resize
      -> map_batches(LabelPredictor, ActorPoolStrategy(min, max), num_gpus=G)
                                                    actor pool, one restore.Engine per actor

The driver (`pipelines.batch.run`) consumes it and publishes shards (`pipelines.batch.commit`).

Inference actors run with `max_restarts=-1, max_task_retries=-1` (Ray Data's
default for actor pools in 2.60; passing them explicitly is deprecated): a dead
actor is restarted and its batch retried, and the driver's per-id collection
absorbs any duplicate.
"""

from __future__ import annotations

import math

from pipelines.batch.checks import validate_before_start
from pipelines.batch.config import LabelJob
from pipelines.batch.decode import decode_batch
from pipelines.batch.predictor import LabelPredictor

DECODE_CPUS = 0.5
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": -1}  # what the inference actor pool runs with


def build_dataset(job: LabelJob, rows: list[dict] | None = None):
    """The Ray Data graph for `rows` (default: the whole listing, no resume). Lazy until consumed."""
    import ray.data

    if rows is None:
        rows = validate_before_start(job)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ordered = sorted(rows, key=lambda r: r["id"])  # shard order, so shards complete (and publish) early
    items = [{"id": r["id"], "uri": r["uri"], "question": r.get("question")} for r in ordered]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(1000, math.ceil(len(items) / job.batch_size))))
    # Decode tasks ask for DECODE_CPUS, not the actor's 1 CPU: reads wait on storage, so two
    # share a core; and with remote args unlike the actor's, Ray Data keeps decode a separate
    # operator instead of fusing it into the inference actor, where it would run serially
    # with generation (DESIGN §7). A test checks the two operators stay apart.
    ds = ds.map_batches(
        decode_batch, fn_kwargs={"job": job}, batch_size=job.batch_size, batch_format="pyarrow", num_cpus=DECODE_CPUS
    )
    return ds.map_batches(
        LabelPredictor,
        fn_constructor_kwargs={"job": job},
        batch_size=job.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=job.workers[0], max_size=job.workers[1]),
        num_cpus=1,
        num_gpus=job.gpus_per_worker or 0,
        # Actor fault tolerance: Ray Data 2.60 creates pool actors with max_restarts=-1 and
        # max_task_retries=-1 unless told otherwise (ACTOR_RETRIES; a test pins that default).
        # Passing them here again goes through **ray_remote_args, deprecated in 2.60 and
        # removed in 2.64. A dead actor is restarted and its batch retried; the driver's
        # per-id collection absorbs any duplicate.
    )
