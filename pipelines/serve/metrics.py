"""Prometheus metrics of the online endpoint.

`Metrics()` records nothing (the app in-process, tests); `Metrics.ray()` records
through `ray.serve.metrics`, which Ray exports with the deployment, replica and
application tags on each node's metrics port (`ray.init(_metrics_export_port=...)`,
Ray's default otherwise). Names (Ray prefixes them with `ray_`):

| metric | kind | tags |
|---|---|---|
| `restore_requests_total` | counter | route, status |
| `restore_request_seconds` | histogram | route |
| `restore_queue_wait_seconds` | histogram | |
| `restore_time_to_first_token_seconds` | histogram | |
| `restore_generated_tokens_total` | counter | |
| `restore_tokens_per_second` | gauge (last request's decode rate) | |
| `restore_visual_tokens_total` / `restore_kept_tokens_total` | counters (before / after reduction) | |
| `restore_prefill_speedup` | gauge (measured over the autoscaling window) | |
| `restore_running_requests`, `restore_waiting_requests` | gauges | |
| `restore_cache_tokens_in_use`, `restore_cache_tokens_max` | gauges | |

`infra/grafana-restore-serve.json` is a dashboard over them.
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


class Metrics:
    """No-op metrics; `Metrics.ray()` for the Ray-exported ones."""

    def request(self, route: str, status: int, seconds: float) -> None:
        pass

    def served(self, stats, queue_wait_s: float, ttft_s: float) -> None:
        pass

    def load(self, running: int, waiting: int, cache_tokens: int, cache_max: int, speedup: float) -> None:
        pass

    @staticmethod
    def ray() -> Metrics:
        return _RayMetrics()


class _RayMetrics(Metrics):
    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter("restore_requests_total", "HTTP requests by route and status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("restore_request_seconds", "HTTP request latency", boundaries=LATENCY_BUCKETS,
                                 tag_keys=("route",))
        self.queue_wait = Histogram("restore_queue_wait_seconds", "Time from arrival to joining the running batch",
                                    boundaries=LATENCY_BUCKETS)
        self.ttft = Histogram("restore_time_to_first_token_seconds", "Time to the first generated token",
                              boundaries=LATENCY_BUCKETS)
        self.tokens = Counter("restore_generated_tokens_total", "Generated tokens")
        self.tokens_per_s = Gauge("restore_tokens_per_second", "Decode rate of the last finished request")
        self.visual = Counter("restore_visual_tokens_total", "Visual tokens before reduction")
        self.kept = Counter("restore_kept_tokens_total", "Visual tokens after reduction (what the LLM saw)")
        self.speedup = Gauge("restore_prefill_speedup", "Measured speedup of reduction over the window")
        self.running = Gauge("restore_running_requests", "Requests in the running decode batch")
        self.waiting = Gauge("restore_waiting_requests", "Requests queued for the running batch")
        self.cache = Gauge("restore_cache_tokens_in_use", "KV-cache tokens reserved by running requests")
        self.cache_max = Gauge("restore_cache_tokens_max", "max_batch_tokens of the scheduler")

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})

    def served(self, stats: Any, queue_wait_s: float, ttft_s: float) -> None:
        self.queue_wait.observe(max(0.0, queue_wait_s))
        self.ttft.observe(max(0.0, ttft_s))
        if stats.generated_tokens:
            self.tokens.inc(stats.generated_tokens)
            if stats.decode_ms > 0:
                self.tokens_per_s.set(stats.generated_tokens / (stats.decode_ms / 1e3))
        if stats.visual_tokens:
            self.visual.inc(stats.visual_tokens)
        if stats.kept_tokens:
            self.kept.inc(stats.kept_tokens)

    def load(self, running: int, waiting: int, cache_tokens: int, cache_max: int, speedup: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.cache.set(cache_tokens)
        self.cache_max.set(cache_max)
        self.speedup.set(speedup)
