"""The online endpoint on Ray Serve: the `RestoreServer` deployment, its application builder, and `run`.

`RestoreServer` wraps `create_app(Service.load(settings))` (one model per
replica) and reports the batcher's measurements to the speedup-aware
autoscaling policy (`pipelines.serve.autoscaling`). `app_builder` is the entry
for `serve run` / `serve deploy` / RayService (`import_path:
pipelines.serve:app_builder`), `run` what `restore serve` calls.
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.serve.app import create_app
from pipelines.serve.autoscaling import SpeedupPolicy
from pipelines.serve.batcher import Service
from pipelines.serve.metrics import Metrics
from pipelines.serve.settings import DeploymentSettings, ServeSettings


def deployment(settings: ServeSettings, dep: DeploymentSettings):
    """The bound Serve application: `RestoreServer` with autoscaling from measured speedups."""
    from ray import serve
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, BackpressureConfig

    @serve.ingress()
    class RestoreServer:
        def __init__(self, settings: dict) -> None:
            self.service = Service.load(ServeSettings(**settings))
            self.service.metrics = Metrics.ray()

        def __serve_build_asgi_app__(self):
            return create_app(self.service, metrics=self.service.metrics)

        def __del__(self) -> None:
            service = getattr(self, "service", None)
            if service is not None:
                service.close()

        def record_autoscaling_stats(self) -> dict[str, float]:
            return self.service.autoscaling_stats()

    autoscaling = AutoscalingConfig(
        min_replicas=dep.min_replicas, max_replicas=dep.max_replicas, initial_replicas=dep.initial_replicas,
        upscale_delay_s=dep.upscale_delay_s, downscale_delay_s=dep.downscale_delay_s,
        metrics_interval_s=dep.metrics_interval_s, look_back_period_s=dep.look_back_period_s,
        policy=AutoscalingPolicy(
            policy_function=SpeedupPolicy,
            policy_kwargs={"target_utilization": dep.target_utilization, "drain_s": dep.drain_s},
        ),
    )
    server = serve.deployment(
        RestoreServer, name="restore", autoscaling_config=autoscaling,
        max_ongoing_requests=dep.max_ongoing_requests, max_queued_requests=dep.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=dep.retry_after_s),
        ray_actor_options={"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
    )
    return server.bind(settings.model_dump(mode="json"))


def app_builder(args: dict[str, Any]):
    """Serve application builder (`import_path: pipelines.serve:app_builder`): args = {settings, deployment}."""
    unknown = set(args) - {"settings", "deployment"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected 'settings' and 'deployment'")
    return deployment(ServeSettings(**args.get("settings", {})), DeploymentSettings(**args.get("deployment", {})))


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "pipelines.serve.proxy:proxy_middlewares"


def http_options(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> dict:
    """Serve's proxy options: the request timeout a little above the app's own `request_timeout_s` (the app
    answers 504 first, in the error shape) and idle keep-alive connections closed after 15 s."""
    return {"host": host, "port": port, "request_timeout_s": settings.request_timeout_s + 5.0,
            "keep_alive_timeout_s": 15}


# Serve's controller kills a proxy not ready within 5 s of its start, and `serve.start` fails with the dead actor
# rather than waiting for the restarted one: on a busy machine `restore serve` failed 2 starts in 3 that way.
PROXY_READY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def proxy_env() -> dict[str, str]:
    """Environment for the Ray processes (set before `ray.init` starts them): Serve's proxy wraps itself in
    `proxy.ProxyMiddleware` (request ids, the error shape of its own 429/503), and is given a minute to start.
    Ray 2.60 takes proxy middlewares only from this variable (`http_options.middlewares` was removed)."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK, **PROXY_READY_ENV, **REPLICA_ENV}


# Several threads of a replica run torch ops (the scheduler, request preparation): OpenMP threads spinning after
# each parallel region steal the scheduler's cores on CPU (encode and prefill measured 4-10x slower).
REPLICA_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def run(settings: ServeSettings, dep: DeploymentSettings, host: str = "127.0.0.1", port: int = 8000,
        blocking: bool = True) -> None:
    """Start Ray (local unless RAY_ADDRESS is set) and Serve on host:port, deploy, and wait until stopped."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        for k, v in proxy_env().items():
            os.environ.setdefault(k, v)
        # A fresh local Ray unless RAY_ADDRESS names a cluster: never join whatever cluster this machine runs.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options=http_options(settings, host, port))
    serve.run(deployment(settings, dep), name="restore", route_prefix="/", blocking=blocking)
