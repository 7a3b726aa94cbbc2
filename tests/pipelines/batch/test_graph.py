"""`pipelines.batch.graph`: what the graph relies on from Ray Data (the graph itself runs in test_run.py)."""

from __future__ import annotations

from pipelines.batch import graph


def test_actor_pool_restarts_and_retries_by_default():
    # build_dataset relies on this default instead of the deprecated **ray_remote_args;
    # an upgrade that changes it must fail here, not silently drop actor fault tolerance.
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert {k: args[k] for k in graph.ACTOR_RETRIES} == graph.ACTOR_RETRIES
