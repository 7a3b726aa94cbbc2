"""The speedup-aware autoscaling policy as a pure function of AutoscalingContext-like inputs."""

from types import SimpleNamespace

import pytest

from pipelines.serve.autoscaling import PolicyParams, SpeedupPolicy, desired_replicas, policy


def ctx(arrivals, full_rate=2.0, speedup=1.0, ongoing=0.0, queued=0.0, replicas=None, lo=1, hi=10):
    """A context with `len(arrivals)` running replicas, each reporting its arrival rate and measurements."""
    ids = [f"r{i}" for i in range(len(arrivals))]
    metrics = {
        "arrival_rate": dict(zip(ids, arrivals)),
        "full_rate": {r: full_rate for r in ids},
        "speedup": {r: speedup for r in ids},
    }
    return SimpleNamespace(
        total_num_requests=ongoing, total_queued_requests=queued, aggregated_metrics=lambda: metrics,
        current_num_replicas=replicas or len(ids), capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi,
    )


def test_same_load_higher_speedup_needs_fewer_replicas():
    load = [3.0, 3.0]  # 6 req/s over two replicas, each 2 req/s at full tokens
    full, _ = desired_replicas(ctx(load, speedup=1.0, ongoing=4), PolicyParams())
    reduced, state = desired_replicas(ctx(load, speedup=3.0, ongoing=4), PolicyParams())
    assert full == 5  # 6 / (2 × 0.7) = 4.3
    assert reduced == 2  # 6 / (6 × 0.7) = 1.4
    assert state["basis"] == "measured capacity" and state["speedup"] == 3.0


def test_burst_scales_up_and_queue_counts():
    calm, _ = policy(ctx([1.0], ongoing=1))
    burst, _ = policy(ctx([8.0], ongoing=20, queued=15))
    assert calm == 1 and burst > calm
    queued_only, _ = policy(ctx([1.0], ongoing=30, queued=28, hi=20), drain_s=2.0)
    assert queued_only == 11  # (1 + 28 / 2) / (2 × 0.7) = 10.7


def test_idle_scales_down_to_min():
    assert policy(ctx([0.0, 0.0, 0.0], replicas=3, lo=1))[0] == 1
    assert policy(ctx([0.0], lo=0))[0] == 0
    assert policy(ctx([0.0], lo=0, ongoing=1))[0] == 1  # in-flight work keeps one replica


def test_bounds_and_fallback_before_any_report():
    assert policy(ctx([100.0], hi=4, ongoing=50))[0] == 4
    nothing = SimpleNamespace(total_num_requests=7, total_queued_requests=0, aggregated_metrics={},
                              capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=10)
    want, state = policy(nothing, target_ongoing_requests=2)
    assert want == 4 and "no replica" in state["basis"]
    assert SpeedupPolicy(min_replicas=2)(ctx([0.0]))[0] == 2


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="target_utilization"):
        PolicyParams(target_utilization=1.5)
    with pytest.raises(ValueError, match="drain_s"):
        SpeedupPolicy(drain_s=0)


def test_concurrency_gain_from_the_cache_counts_as_capacity():
    load = [3.0, 3.0]
    base = ctx(load, speedup=1.0, ongoing=4)
    gained = ctx(load, speedup=1.0, ongoing=4)
    metrics = gained.aggregated_metrics()
    metrics["concurrency_gain"] = {r: 3.0 for r in metrics["full_rate"]}
    gained.aggregated_metrics = lambda: metrics
    assert desired_replicas(base, PolicyParams())[0] == 5 and desired_replicas(gained, PolicyParams())[0] == 2
