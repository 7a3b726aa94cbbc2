"""`python -m pipelines.bench.serve_load`: a bounded load test of the online endpoint on loopback.

Part 1, batching (`--batching static,continuous`): for each batching mode and
each concurrency level, `--requests` chat completions (one generated image
each) are sent by that many client threads: a mix of 90 % short requests (a
question, `max_tokens` 8–16) and 10 % long ones (a caption, `max_tokens`
128–256), the same sequence for every run. Every request sets `ignore_eos`
(as vLLM's serving benchmark does), so it generates exactly its `max_tokens`:
the default model ends most answers after a few tokens, which would erase the
mix (`--stop-at-eos` measures that instead). Reported: requests/s, p50/p95
latency of the short requests, p95 of all, mean requests running at once.

Part 2, concurrency bought by reduction (`--cache-tokens`): continuous batching
with a fixed `max_batch_tokens`, captions at the highest concurrency, once with
every visual token (`restore: {"method": "none"}`) and once with the
deployment's reduction: requests running at once (sampled in the replica) and
requests/s.

The app runs in this process under uvicorn on 127.0.0.1 (the same FastAPI app
and service a Serve replica runs), one server per setting. A program, not a
test: nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from restore.bench.report import write_report

# Several threads run torch ops in a replica (the scheduler, request preparation): OpenMP threads that spin
# after each parallel region steal the cores the scheduler needs (measured: encode and prefill 4-10x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUESTIONS = ["how many red shapes are there ?", "is there a blue circle ?", "what colour is the cross ?",
             "where is the triangle ?"]


def _image_url(seed: int) -> str:
    from restore.zoo import world

    buf = io.BytesIO()
    world.render(world.random_scene(random.Random(f"bench-serve:{seed}"))).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _post(url: str, body: dict) -> tuple[int, float, dict]:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, time.perf_counter() - t0, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - t0, {}


def mix(n: int, seed: int = 0) -> list[tuple[str, int, str]]:
    """(kind, max_tokens, prompt) for n requests: 90 % short questions, 10 % long captions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.1:
            out.append(("long", rng.randint(128, 256), "describe the image ."))
        else:
            out.append(("short", rng.randint(8, 16), QUESTIONS[i % len(QUESTIONS)]))
    return out


def _pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return 1e3 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


class _Sampler:
    """Samples the replica's running count while a level runs."""

    def __init__(self, service) -> None:
        self.service, self.samples, self.stop = service, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            self.samples.append(self.service.running)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_level(url: str, service, concurrency: int, plan: list[tuple[str, int, str]], images: list[str],
              reduction: dict | None = None, ignore_eos: bool = True) -> dict:
    def one(i: int):
        kind, max_tokens, prompt = plan[i]
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": images[i % len(images)]}}]}], "max_tokens": max_tokens,
            "ignore_eos": ignore_eos}
        if reduction is not None:
            body["restore"] = reduction
        code, lat, out = _post(url, body)
        return kind, code, lat, out

    with _Sampler(service) as sampler:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(len(plan))))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] == 200]
    short = [lat for kind, _, lat, _ in ok if kind == "short"]
    tokens = {k: [out["usage"]["completion_tokens"] for kind, _, _, out in ok if kind == k] for k in ("short", "long")}
    busy = [s for s in sampler.samples if s > 0]
    return {
        "concurrency": concurrency, "requests": len(plan), "ok": len(ok),
        "errors": sorted({r[1] for r in results if r[1] != 200}),
        "requests_per_s": len(ok) / wall,
        "short_p50_ms": _pct(short, 0.5), "short_p95_ms": _pct(short, 0.95),
        "all_p95_ms": _pct([lat for _, _, lat, _ in ok], 0.95),
        "mean_running": statistics.mean(busy) if busy else 0.0, "max_running": max(busy, default=0),
        "short_tokens": statistics.mean(tokens["short"]) if tokens["short"] else None,
        "long_tokens": statistics.mean(tokens["long"]) if tokens["long"] else None,
        "kept_tokens": statistics.mean(out["restore"]["kept_tokens"] for *_, out in ok) if ok else None,
    }


def serve_in_process(settings) -> tuple[str, object, object]:
    import uvicorn

    from pipelines.serve.app import create_app
    from pipelines.serve.batcher import Service

    service = Service.load(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, service


def main(argv: list[str] | None = None) -> dict:
    from pipelines.serve.settings import ServeSettings

    p = argparse.ArgumentParser(prog="python -m pipelines.bench.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--method", default="divprune", help="the deployment's reduction")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--batching", default="static,continuous", help="modes to compare, comma separated")
    p.add_argument("--concurrency", default="4,16,32", help="client threads, comma separated")
    p.add_argument("--requests", type=int, default=192,
                   help="requests per level (bounded load; fewer make the p95 a ramp-up and drain figure)")
    p.add_argument("--max-batch-size", type=int, default=8, help="static: requests per batch")
    p.add_argument("--max-running", type=int, default=32, help="continuous: requests decoding at once")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="continuous: cache tokens (part 1)")
    p.add_argument("--prefill-group", type=int, default=8, help="continuous: requests prefilled together")
    p.add_argument("--cache-tokens", type=int, default=2560,
                   help="part 2: the fixed max_batch_tokens (0 skips part 2)")
    p.add_argument("--cache-max-tokens", type=int, default=48, help="part 2: max_tokens of each caption")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="part 1: let requests end at the model's end token instead of generating max_tokens")
    p.add_argument("--out", default="out/serve")
    args = p.parse_args(argv)
    reduction = {"method": args.method, "budget": args.budget}
    base = dict(model=args.model, reduction=reduction, device=args.device, calibrate=False,
                max_batch_size=args.max_batch_size, max_running=args.max_running, max_tokens=512,
                prefill_group=args.prefill_group,
                max_waiting=4096, request_timeout_s=600)
    images = [_image_url(i) for i in range(16)]
    plan = mix(args.requests)
    levels = [int(x) for x in args.concurrency.split(",")]
    rows, cache_rows = [], []
    modes = args.batching.split(",")
    servers = {m: serve_in_process(ServeSettings(**base, batching=m, max_batch_tokens=args.max_batch_tokens))
               for m in modes}
    try:
        for url, _, service in servers.values():
            run_level(url, service, 4, plan[:8], images, ignore_eos=not args.stop_at_eos)  # warm-up
        for c in levels:  # the modes interleaved per level: the same background load for both
            for mode in modes:
                url, _, service = servers[mode]
                r = {"batching": mode, **run_level(url, service, c, plan, images, ignore_eos=not args.stop_at_eos)}
                rows.append(r)
                print(f"{mode:<10} c={c:<3} ok {r['ok']}/{r['requests']}  {r['requests_per_s']:.2f} req/s  "
                      f"short p50 {r['short_p50_ms']:.0f} p95 {r['short_p95_ms']:.0f} ms  running "
                      f"{r['mean_running']:.1f} (max {r['max_running']})", flush=True)
    finally:
        for _, server, service in servers.values():
            server.should_exit = True
            service.close()
    if args.cache_tokens:
        url, server, service = serve_in_process(ServeSettings(**base, batching="continuous",
                                                              max_batch_tokens=args.cache_tokens))
        c = max(levels)
        caps = [("long", args.cache_max_tokens, "describe the image .")] * args.requests
        try:
            run_level(url, service, 4, caps[:4], images)  # warm-up
            for name, red in (("all tokens", {"method": "none"}), (f"{args.method} {args.budget}", None)):
                r = {"setting": name, **run_level(url, service, c, caps, images, red)}
                cache_rows.append(r)
                print(f"{name:<14} max_batch_tokens {args.cache_tokens}: running {r['mean_running']:.1f} "
                      f"(max {r['max_running']})  {r['requests_per_s']:.2f} req/s  kept {r['kept_tokens']}",
                      flush=True)
        finally:
            server.should_exit = True
            service.close()
    report = {"model": args.model, "reduction": reduction, "requests": args.requests,
              "ignore_eos": not args.stop_at_eos, "batching": rows,
              "cache": {"max_batch_tokens": args.cache_tokens, "concurrency": max(levels), "results": cache_rows}}
    lines = ["| batching | concurrency | ok | req/s | short p50 ms | short p95 ms | all p95 ms | running mean (max) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batching']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {r['requests_per_s']:.2f} "
                     f"| {r['short_p50_ms']:.0f} | {r['short_p95_ms']:.0f} | {r['all_p95_ms']:.0f} | "
                     f"{r['mean_running']:.1f} ({r['max_running']}) |")
    if cache_rows:
        lines += ["", f"max_batch_tokens {args.cache_tokens}, concurrency {max(levels)}, captions of at most "
                  f"{args.cache_max_tokens} tokens:", "",
                  "| visual tokens | kept | running mean (max) | req/s |", "|---|---|---|---|"]
        for r in cache_rows:
            lines.append(f"| {r['setting']} | {r['kept_tokens']:.0f} | {r['mean_running']:.1f} ({r['max_running']}) "
                         f"| {r['requests_per_s']:.2f} |")
    write_report(args.out, "serve", report, "\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
