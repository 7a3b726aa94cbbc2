"""Throughput of the labeling pipeline vs a plain single-process loop, full tokens and reduced.

    python -m pipelines.bench.throughput --images 64 [--model default] [--json bench_throughput.json]

Both sides label the same generated PNG files (local disk) with the same `restore.Engine`
settings, caption task, `batch_size` rows per `generate` call:

- loop: one process reads and decodes (`media.decode.decode_image`, same `max_pixels`) in a thread,
  one batch ahead, while the main thread calls `engine.generate` batch after batch; its time
  includes building the Engine (the model stack is imported before the clock starts).
- pipeline: `pipelines.batch.run.run` on a local Ray (`--cpus`, decode tasks + `--workers`
  inference actors), fresh output each time; its time is the summary's `wall_s` (after
  `ray.init`: actor start-up, decode, inference and the workers' part-file writes).

Each side also reports its steady state, measured alike: rows finished after the first batch
over the time since the first batch finished (for the pipeline from the rows' `finished_at`),
and `first_batch_s`, the time from its start until the first batch was done. On a corpus the
steady rate is the throughput; the first batch's wait is paid once per job.

It prints a table and writes the numbers as JSON. Timings only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int, size: int) -> list[str]:
    from restore.zoo.world import scene_image

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = scene_image(1000 + i, size)
        path = root / f"scene{i:04d}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def run_loop(job, paths: list[str]) -> dict:
    """Decode + generate in one process, batch by batch, with the Engine the actors build; a thread
    decodes the next batch while the current one generates (decode overlapped with inference)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.batch.predictor import LabelPredictor
    from pipelines.media.decode import decode_image, read_bytes
    from restore import Engine, Request  # noqa: F401  (Engine: the model stack loads here, before the clock)

    def decode(chunk: list[str]) -> tuple[list, float]:
        t = time.perf_counter()
        return [decode_image(read_bytes(p), p, job.max_pixels) for p in chunk], time.perf_counter() - t

    t0 = time.perf_counter()
    predictor = LabelPredictor(job)  # the same Engine construction as an inference actor
    load_s = time.perf_counter() - t0
    prompt = predictor.engine.media_prompt(job.default_prompt(), 1)
    chunks = [paths[i : i + job.batch_size] for i in range(0, len(paths), job.batch_size)]
    kept, decode_s, wait_s, generate_s, done_at = [], 0.0, 0.0, 0.0, []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(decode, chunks[0])
        for i in range(len(chunks)):
            t1 = time.perf_counter()
            images, took = pending.result()
            wait_s += time.perf_counter() - t1
            decode_s += took
            if i + 1 < len(chunks):
                pending = pool.submit(decode, chunks[i + 1])
            t2 = time.perf_counter()
            results = predictor.engine.generate([Request(prompt, images=[im]) for im in images],
                                                max_new_tokens=job.max_new_tokens)
            generate_s += time.perf_counter() - t2
            done_at.append(time.perf_counter() - t0)
            kept += [r.stats.kept_tokens for r in results]
    wall = time.perf_counter() - t0
    after_first = len(paths) - len(chunks[0])
    steady = after_first / (done_at[-1] - done_at[0]) if len(done_at) > 1 else None
    return {"wall_s": round(wall, 3), "engine_load_s": round(load_s, 3), "decode_s": round(decode_s, 3),
            "decode_wait_s": round(wait_s, 3), "generate_s": round(generate_s, 3),
            "items_per_s": round(len(paths) / wall, 3), "steady_items_per_s": _round(steady),
            "first_batch_s": round(done_at[0], 3), "mean_kept_tokens": sum(kept) / len(kept)}


def _round(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


def run_pipeline(job) -> dict:
    """One job; `steady_items_per_s` counts rows finished after the first batch over the time since it finished
    (actor start-up excluded), from the rows' `finished_at`; `first_batch_s` is when the first batch was done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.batch.run import run

    start = time.time()
    s = run(job)
    assert s.rows_ok == s.rows_total, f"{s.rows_error} error rows in {job.output}"
    table = pa.concat_tables([pq.read_table(p) for p in sorted(Path(job.output).glob("part-*.parquet"))])
    done = sorted(t.timestamp() for t in table["finished_at"].to_pylist())
    first = done[job.batch_size - 1] if len(done) > job.batch_size else done[0]
    steady = (len(done) - job.batch_size) / (done[-1] - first) if done[-1] > first else None
    return {"wall_s": s.wall_s, "items_per_s": s.items_per_s, "steady_items_per_s": _round(steady),
            "first_batch_s": round(first - start, 3), "mean_kept_tokens": s.mean_kept_tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=96, help="side of the generated scenes in pixels (the world's is 96)")
    p.add_argument("--method", default="divprune", help="method of the reduced config (RESTORE-wrapped)")
    p.add_argument("--budget", type=int, default=64, help="visual tokens per image in the reduced config")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--workers", default="1,1", help="MIN,MAX inference actors")
    p.add_argument("--loop-threads", type=int, default=1,
                   help="torch threads of the loop; 1 matches the inference actor (OMP_NUM_THREADS=1, 1 CPU), "
                   "0 keeps torch's default")
    p.add_argument("--json", default="bench_throughput.json", help="where to write the numbers")
    args = p.parse_args(argv)

    import ray
    import torch

    from pipelines.batch.config import LabelJob

    if args.loop_threads:
        torch.set_num_threads(args.loop_threads)
    configs = {"full": {"method": "none", "budget": None}, "reduced": {"method": args.method, "budget": args.budget}}
    results: dict = {"model": args.model, "images": args.images, "size": args.size, "batch_size": args.batch_size,
                     "max_new_tokens": args.max_new_tokens, "cpus": args.cpus, "workers": args.workers,
                     "loop_torch_threads": torch.get_num_threads(), "host": platform.node(),
                     "cpu_count": os.cpu_count(), "configs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        paths = make_images(root / "images", args.images, args.size)

        def job(name: str, out: str) -> LabelJob:
            return LabelJob(kind="images", input=str(root / "images"), output=out, model=args.model,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, workers=args.workers,
                            shard_size=max(args.batch_size, 16), **configs[name])

        env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        # Each config's loop and pipeline run back to back, so that this machine's drift over minutes
        # hits both alike; Ray starts after the loop and stops before the next one, so nothing else
        # competes with the loop for the cores.
        for name in configs:
            print(f"loop {name} ...", file=sys.stderr)
            results["configs"][name] = {"loop": run_loop(job(name, str(root / "unused")), paths)}
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
            try:
                # Untimed warm-up job: the first actor of a fresh Ray pays cold imports that later ones do not.
                print("pipeline warm-up ...", file=sys.stderr)
                warm = job(name, str(root / f"out-warmup-{name}")).model_copy(update={"limit": args.batch_size})
                run_pipeline(warm)
                print(f"pipeline {name} ...", file=sys.stderr)
                results["configs"][name]["pipeline"] = run_pipeline(job(name, str(root / f"out-{name}")))
            finally:
                ray.shutdown()

    c = results["configs"]
    for name in c:
        c[name]["pipeline_over_loop"] = round(c[name]["pipeline"]["items_per_s"] / c[name]["loop"]["items_per_s"], 3)
        steady = [c[name][side]["steady_items_per_s"] for side in ("pipeline", "loop")]
        c[name]["pipeline_over_loop_steady"] = round(steady[0] / steady[1], 3) if all(steady) else None
    results["reduced_over_full"] = {
        side: round(c["reduced"][side]["items_per_s"] / c["full"][side]["items_per_s"], 3)
        for side in ("loop", "pipeline")
    }
    print(f"model {args.model}, {args.images} images of {args.size} px, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens, Ray {args.cpus} CPUs / workers {args.workers}")
    print("| config | kept tokens | loop img/s | pipeline img/s | pipeline / loop | loop steady | pipeline steady "
          "| steady ratio | first batch s (loop / pipeline) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in c.items():
        lp, pp = r["loop"], r["pipeline"]
        print(f"| {name} | {lp['mean_kept_tokens']:.0f} | {lp['items_per_s']:.2f} | {pp['items_per_s']:.2f} | "
              f"{r['pipeline_over_loop']:.3f} | {lp['steady_items_per_s']} | {pp['steady_items_per_s']} | "
              f"{r['pipeline_over_loop_steady']} | {lp['first_batch_s']:.1f} / {pp['first_batch_s']:.1f} |")
    print(f"reduced/full speedup: loop {results['reduced_over_full']['loop']:.2f}x, "
          f"pipeline {results['reduced_over_full']['pipeline']:.2f}x")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
