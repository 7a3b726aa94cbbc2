"""The Ray Data graph of the labeling job (DESIGN §7: decode on CPU workers, overlapped with inference)::

    read_datasource(listing inputs)                 read tasks: list folders / read manifests, ids, vqa fan-out
      [-> CheckpointFilter]                         Ray Data drops ids already committed (checkpoint_config)
      [-> limit(n)]                                 rows still allowed by --limit
      -> map_batches(decode.decode_batch)           CPU tasks: read (local/S3) + decode + resize
      -> map_batches(LabelPredictor, ActorPoolStrategy(min, max), num_gpus=G)
                                                    actor pool, one restore.Engine and one continuous-
                                                    batching scheduler per actor, batches fed concurrently
      -> write_datasink(commit.part_sink)           write tasks: part files, two-phase checkpoint commit

No row passes through the driver. Inference actors run with unbounded
restarts but `job.max_task_retries` retries per batch (ACTOR_RETRIES): a batch
that keeps killing its actor ends the job after that many tries, and the crash
journal (`pipelines.batch.predictor`) isolates the poison input well before.
"""

from __future__ import annotations

from typing import Any

from pipelines.batch.config import LabelJob
from pipelines.batch.decode import decode_batch
from pipelines.batch.listing import Unit, make_datasource
from pipelines.batch.predictor import CALLS_PER_ACTOR, LabelPredictor

DECODE_CPUS = 0.5
# Listing and manifest reads wait on storage. They ask for no CPU: on a rerun Ray Data's checkpoint
# filter actors (1 CPU each) and the inference actors could otherwise hold every CPU of a small node
# while the read that feeds the filter waits for one (seen on 2 cores: the rerun never started).
READ_CPUS = 0


ACTOR_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def actor_retries(job: LabelJob) -> dict[str, int]:
    """What the inference actor pool runs with (Ray Data's default is -1 for both: retried forever)."""
    return {"max_restarts": -1, "max_task_retries": job.max_task_retries}


def build_dataset(job: LabelJob, units: list[Unit], questions: list[str] | None = None, limit: int | None = None,
                  stats_dir: str | None = None) -> Any:
    """The lazy Ray Data graph up to the predictor's output rows (OUTPUT_SCHEMA)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ds = ray.data.read_datasource(make_datasource(units, job, questions, stats_dir), num_cpus=READ_CPUS)
    if limit is not None:
        ds = ds.limit(limit)
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
        # Several batches at once in each actor, run concurrently: they feed one continuous-batching scheduler.
        compute=ray.data.ActorPoolStrategy(min_size=job.workers[0], max_size=job.workers[1],
                                           max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                           enable_true_multi_threading=True),
        num_cpus=1,
        num_gpus=job.gpus_per_worker or 0,
        # Ray 2.60 takes these only through **ray_remote_args (deprecated, removed in 2.64; the named
        # parameters do not cover them yet): finite task retries end a batch that keeps killing actors.
        # The scheduler's thread and the calls' threads run torch ops: no spinning OpenMP threads (as in serve).
        runtime_env={"env_vars": ACTOR_ENV},
        **actor_retries(job),
    )
