"""`pipelines.serve.deployment` on a local Ray: answers over HTTP, scales up under a bounded load from the replicas'
measured stats and back down when idle, and sheds excess load with 429 + Retry-After."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from pipelines.serve.deployment import deployment, http_options, proxy_env  # noqa: E402
from pipelines.serve.settings import DeploymentSettings, ServeSettings  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.serve]

APP = "restore-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            out = json.loads(raw)
        except ValueError:
            out = {"raw": raw.decode("latin-1")}
        return err.code, {k.lower(): v for k, v in err.headers.items()}, out


def body() -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 40, 40)).save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "what ?"},
                                                      {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 2}


def running(name: str = "restore") -> int:
    status = serve.status().applications[APP].deployments[name]
    return sum(n for state, n in status.replica_states.items() if str(state).endswith("RUNNING"))


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def local_serve(monkeypatch_module):
    for k, v in proxy_env().items():
        monkeypatch_module.setenv(k, v)
    # A fresh local Ray (never one another process on this machine runs), metrics on a known port.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=METRICS_PORT, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options=http_options(ServeSettings(model="random:llava-tiny"), "127.0.0.1", port))
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def test_scales_up_under_load_and_down_when_idle(local_serve):
    settings = ServeSettings(model="random:llava-tiny", reduction={"method": "pool", "budget": 4}, window_s=3.0,
                             calibrate=True, max_tokens=8, default_max_tokens=2)
    # A low target utilisation makes a few requests per second more than one tiny replica should carry.
    dep = DeploymentSettings(min_replicas=1, max_replicas=2, upscale_delay_s=0.5, downscale_delay_s=2.0,
                             metrics_interval_s=0.5, look_back_period_s=2.0, target_utilization=0.02,
                             num_cpus=0.5, max_ongoing_requests=8, max_queued_requests=64)
    serve.run(deployment(settings, dep), name=APP, route_prefix="/", blocking=False)
    url = local_serve
    wait_for(lambda: ready(url), 240, "readyz")
    status, _, out = post(f"{url}/v1/chat/completions", body())
    assert status == 200 and out["restore"]["kept_tokens"] == 4
    assert running() == 1

    stop = threading.Event()
    codes: list[int] = []

    def load():
        while not stop.is_set():
            codes.append(post(f"{url}/v1/chat/completions", body())[0])

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: running() == 2, 240, "a second replica under load")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert codes and set(codes) == {200}  # everything accepted was answered
    wait_for(lambda: running() == 1, 180, "scale back to one replica when idle")
    serve.delete(APP)


def test_excess_load_gets_429_with_retry_after(local_serve):
    settings = ServeSettings(model="random:llava-tiny", calibrate=False, batching="static", batch_wait_ms=300,
                             max_batch_size=1,
                             max_tokens=8, default_max_tokens=2)
    dep = DeploymentSettings(min_replicas=1, max_replicas=1, max_ongoing_requests=1, max_queued_requests=1,
                             retry_after_s=3, num_cpus=0.5)
    serve.run(deployment(settings, dep), name=APP, route_prefix="/", blocking=False)
    url = local_serve
    wait_for(lambda: ready(url), 240, "readyz")
    results: list[tuple[int, dict, dict]] = []
    threads = [threading.Thread(target=lambda: results.append(post(f"{url}/v1/chat/completions", body())))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(code for code, _, _ in results)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    # Serve's own backpressure answer, rewritten by the proxy middleware: the error shape, a jittered Retry-After.
    assert all(2 <= int(h["retry-after"]) <= 4 for code, h, _ in results if code == 429)
    assert all(out["error"]["type"] == "rate_limit_error" for code, _, out in results if code == 429)
    # A request id that is not UTF-8 gets a fresh one instead of a 500 from the proxy.
    req = urllib.request.Request(f"{url}/v1/models")
    req.add_unredirected_header("X-Request-ID", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1"))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and len(resp.headers["x-request-id"]) == 32
    serve.delete(APP)


def scrape() -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


def test_replica_metrics_reach_the_metrics_endpoint(local_serve):
    settings = ServeSettings(model="random:llava-tiny", reduction={"method": "pool", "budget": 4}, calibrate=False,
                             max_tokens=8, default_max_tokens=2)
    serve.run(deployment(settings, DeploymentSettings(num_cpus=0.5)), name=APP, route_prefix="/", blocking=False)
    url = local_serve
    wait_for(lambda: ready(url), 240, "readyz")
    for _ in range(3):
        assert post(f"{url}/v1/chat/completions", body())[0] == 200
    assert post(f"{url}/v1/chat/completions", {"messages": []})[0] == 400
    names = ["ray_restore_requests_total", "ray_restore_request_seconds", "ray_restore_queue_wait_seconds",
             "ray_restore_time_to_first_token_seconds", "ray_restore_generated_tokens_total",
             "ray_restore_tokens_per_second", "ray_restore_visual_tokens_total", "ray_restore_kept_tokens_total",
             "ray_restore_running_requests", "ray_restore_cache_tokens_in_use", "ray_restore_prefill_speedup"]
    wanted = [*names, 'status="400"', 'route="/v1/chat/completions"']
    wait_for(lambda: all(n in scrape() for n in wanted), 120, "the replica's metrics on the metrics port")
    serve.delete(APP)
