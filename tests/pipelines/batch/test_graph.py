"""`pipelines.batch.graph`: what the graph relies on from Ray Data (the graph itself runs in test_run.py)."""

from __future__ import annotations

from pipelines.batch import graph
from pipelines.batch.config import LabelJob


def test_inference_actors_retry_a_batch_a_bounded_number_of_times():
    # Ray Data's default (-1: a batch that kills its actor is retried forever) must be overridden,
    # and the override must reach the actor's remote args.
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    job = LabelJob(kind="images", input="/x", output="/y", max_task_retries=5)
    assert graph.actor_retries(job)["max_task_retries"] == 5
    args = ActorPoolMapOperator._apply_default_remote_args(graph.actor_retries(job), DataContext.get_current())
    assert args["max_task_retries"] == 5
    assert ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())["max_task_retries"] == -1
