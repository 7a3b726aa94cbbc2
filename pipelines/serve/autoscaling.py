"""Replica count for the Serve deployment from measured load and measured token-reduction speedups.

What each replica reports (`record_autoscaling_stats`, see `pipelines.serve.deployment`):
- `arrival_rate`: requests it received per second over its recent window;
- `full_rate`: requests per second it would serve with every visual token, from
  a cost model calibrated on this replica at start-up (prefill time measured
  at two token counts on its own hardware, a + b·tokens);
- `speedup`: on its real traffic, the cost model's full-token prefill time over
  the prefill time actually measured for the same requests, summed over the
  window. Measuring the reduced side and modelling only the counterfactual
  full-token side keeps every live request fast: an occasional full-token
  probe would make some users pay the unreduced latency, and idle replicas
  still know their full rate.

- `concurrency_gain`: requests that fit the scheduler's cache budget
  (`max_batch_tokens`, `max_running`) at once at this traffic's reduced cache
  cost, over those that would fit with every visual token: the extra
  concurrency reduction buys under continuous batching (1 when the cache is
  not the bound).

Capacity of a replica is `full_rate × speedup × concurrency_gain` requests/s. The policy asks for
enough replicas that arrivals plus draining the queue within `drain_s` use at
most `target_utilization` of the fleet's capacity. More reduction → higher
measured speedup → more capacity per replica → fewer replicas for the same
traffic, which queue length alone cannot tell until the queue has already
grown. Before any replica has reported, it falls back to Serve's rule
(ongoing requests / `target_ongoing_requests`).

`policy(ctx)` is a plain function of an `AutoscalingContext`-like object, so
tests call it directly; `SpeedupPolicy` is the class Serve instantiates with
`policy_kwargs` (Ray 2.60 instantiates classes once and calls them per tick).
Serve still applies upscale/downscale delays and min/max replicas around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

METRICS = ("arrival_rate", "full_rate", "speedup", "concurrency_gain")


@dataclass(frozen=True)
class PolicyParams:
    target_utilization: float = 0.7
    drain_s: float = 10.0
    target_ongoing_requests: float = 2.0
    min_replicas: int | None = None  # None: the deployment's (capacity-adjusted) bounds
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.target_utilization <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {self.target_utilization}")
        if self.drain_s <= 0 or self.target_ongoing_requests <= 0:
            raise ValueError("drain_s and target_ongoing_requests must be > 0")


def _value(x):
    return x() if callable(x) else x


def _per_replica(ctx, name: str) -> dict[Any, float]:
    metrics = _value(getattr(ctx, "aggregated_metrics", None)) or {}
    return {r: float(v) for r, v in (metrics.get(name) or {}).items() if v is not None and math.isfinite(float(v))}


def desired_replicas(ctx, params: PolicyParams) -> tuple[int, dict]:
    """(replicas, state): the replica count for the current load and measured capacity, with the figures used."""
    lo = params.min_replicas if params.min_replicas is not None else ctx.capacity_adjusted_min_replicas
    hi = params.max_replicas if params.max_replicas is not None else ctx.capacity_adjusted_max_replicas
    ongoing = float(_value(ctx.total_num_requests) or 0.0)
    queued = float(_value(getattr(ctx, "total_queued_requests", 0.0)) or 0.0)
    arrivals = _per_replica(ctx, "arrival_rate")
    full = _per_replica(ctx, "full_rate")
    speed = _per_replica(ctx, "speedup")
    gain = _per_replica(ctx, "concurrency_gain")
    capacities = [full[r] * speed.get(r, 1.0) * max(1.0, gain.get(r, 1.0)) for r in full if full[r] > 0]
    state: dict[str, Any] = {"ongoing": ongoing, "queued": queued}
    if not capacities:
        want = math.ceil(ongoing / params.target_ongoing_requests)
        state["basis"] = "ongoing requests (no replica has reported yet)"
    else:
        per_replica = sum(capacities) / len(capacities)
        demand = sum(arrivals.values()) + queued / params.drain_s
        want = math.ceil(demand / (per_replica * params.target_utilization) - 1e-9)
        if ongoing > 0:
            want = max(want, 1)  # never scale to zero under in-flight work
        state.update(basis="measured capacity", capacity_per_replica=per_replica, demand=demand,
                     speedup=sum(speed.values()) / len(speed) if speed else 1.0)
    replicas = max(lo, min(hi, want))
    state["desired"] = replicas
    return replicas, state


def policy(ctx, **kwargs) -> tuple[int, dict]:
    """Serve policy function (default parameters, or `kwargs` as `PolicyParams`)."""
    return desired_replicas(ctx, PolicyParams(**kwargs))


class SpeedupPolicy:
    """The policy with `policy_kwargs` (Serve instantiates it once per deployment)."""

    def __init__(self, **kwargs) -> None:
        self.params = PolicyParams(**kwargs)

    def __call__(self, ctx) -> tuple[int, dict]:
        return desired_replicas(ctx, self.params)
