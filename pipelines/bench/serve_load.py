"""`python -m pipelines.bench.serve_load`: a bounded load test of the online endpoint on loopback.

For each concurrency level, `--requests` chat completions (one generated image
each) are sent by that many client threads, once with every visual token
(`restore: {"method": "none"}`) and once with the deployment's reduction;
p50/p95 latency and requests/s are printed as a table and written to JSON.
By default the app runs in this process under uvicorn on 127.0.0.1 (the same
FastAPI app and batcher a Serve replica runs); `--url` targets a running server
instead (`restore serve`). A program, not a test: nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _image_url(seed: int) -> str:
    from restore.zoo import world

    buf = io.BytesIO()
    world.render(world.random_scene(random.Random(f"bench-serve:{seed}"))).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _post(url: str, body: dict, key: str | None) -> tuple[int, float, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            out = json.loads(resp.read())
            return resp.status, time.perf_counter() - t0, out
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - t0, {}


def run_level(url: str, concurrency: int, requests: int, reduction: dict | None, max_tokens: int,
              key: str | None) -> dict:
    images = [_image_url(i) for i in range(min(requests, 16))]

    def one(i: int):
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "describe the image ."},
            {"type": "image_url", "image_url": {"url": images[i % len(images)]}}]}], "max_tokens": max_tokens}
        if reduction is not None:
            body["restore"] = reduction
        return _post(url, body, key)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    ok = [(lat, out) for code, lat, out in results if code == 200]
    lat = sorted(x for x, _ in ok)
    kept = [out["restore"]["kept_tokens"] for _, out in ok]
    return {
        "concurrency": concurrency, "requests": requests, "ok": len(ok),
        "errors": {str(c): sum(1 for code, _, _ in results if code == c) for c in {r[0] for r in results} if c != 200},
        "p50_ms": 1e3 * statistics.median(lat) if lat else None,
        "p95_ms": 1e3 * lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "requests_per_s": len(ok) / wall, "kept_tokens": statistics.mean(kept) if kept else None,
        "mean_batch": statistics.mean(out["restore"]["batch_size"] for _, out in ok) if ok else None,
    }


def _serve_in_process(args) -> tuple[str, object]:
    import uvicorn

    from pipelines.serve.app import create_app
    from pipelines.serve.batcher import Service
    from pipelines.serve.settings import ServeSettings

    reduction = {"method": args.method, "budget": args.budget}
    service = Service.load(ServeSettings(model=args.model, reduction=reduction, max_batch_size=args.max_batch_size,
                                         device=args.device, calibrate=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running endpoint (default: start the app in this process on 127.0.0.1)")
    p.add_argument("--api-key")
    p.add_argument("--model", default="default")
    p.add_argument("--method", default="divprune", help="the deployment's reduction (in-process server)")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma separated")
    p.add_argument("--requests", type=int, default=32, help="requests per level and setting (bounded load)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--out", default="out/serve")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        url, server = _serve_in_process(args)
    rows = []
    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            for name, reduction in (("full", {"method": "none"}), ("reduced", None)):
                r = run_level(url, c, args.requests, reduction, args.max_tokens, args.api_key)
                rows.append({"setting": name, **r})
                print(f"{name:<8} c={c:<3} ok {r['ok']}/{r['requests']}  p50 {r['p50_ms']:.0f} ms  "
                      f"p95 {r['p95_ms']:.0f} ms  {r['requests_per_s']:.2f} req/s  kept {r['kept_tokens']}  "
                      f"batch {r['mean_batch']:.1f}", flush=True)
    finally:
        if server is not None:
            server.should_exit = True
    report = {"url": url, "model": args.model, "method": args.method, "budget": args.budget,
              "max_tokens": args.max_tokens, "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(report, indent=2))
    lines = ["| setting | concurrency | ok | p50 ms | p95 ms | req/s | kept tokens | mean batch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['requests_per_s']:.2f} | {r['kept_tokens']} | {r['mean_batch']:.1f} |")
    (out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
