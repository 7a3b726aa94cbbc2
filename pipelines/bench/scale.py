"""How the labeling job scales with the size of its input: driver memory, time to first file, rows/s, rerun.

    python -m pipelines.bench.scale --rows 10000 100000 [--json bench_scale.json]

For each N, a manifest (Parquet) of N rows with unique ids pointing at a handful of small
generated images is labeled by a tiny fast model (`random:llava-tiny`, 24 px images, one
new token), in a fresh subprocess with its own local Ray. Measured there:

- driver peak RSS (sampled every 50 ms from /proc) and the RSS of an idle `ray.init()` driver;
- time from `run()` to the first part file in the output;
- rows/s of the whole run (listing, decode, inference, writes);
- the time of a rerun of the finished job (nothing left: Ray Data's checkpoint filters every row).

Prints a Markdown table and writes JSON. No timing is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMAGES = 8


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, out: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.peak, self.out, self.first_file_s, self.stop, self.t0 = 0.0, out, None, False, time.perf_counter()

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, rss_mb())
            if self.out is not None and self.first_file_s is None and self.out.exists():
                if next(self.out.glob("part-*.parquet"), None) is not None:
                    self.first_file_s = time.perf_counter() - self.t0
            time.sleep(0.05)


def make_corpus(root: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from restore.zoo.world import scene_image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(IMAGES):
        scene_image(i, 24).save(root / f"img{i}.png")
    ids = pa.array([f"row-{i:09d}" for i in range(n)])
    uris = pa.array([str(root / f"img{i % IMAGES}.png") for i in range(n)])
    manifest = root / "manifest.parquet"
    pq.write_table(pa.table({"id": ids, "uri": uris}), manifest, row_group_size=65536)
    return manifest


def one(n: int, work: Path, batch_size: int) -> dict:
    """Runs in its own process: one N, first run and rerun."""
    import ray

    from pipelines.batch.config import LabelJob
    from pipelines.batch.run import run

    manifest = make_corpus(work / "corpus", n)
    out = work / "out"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    time.sleep(2)
    idle = rss_mb()
    job = LabelJob(kind="images", input=str(manifest), output=str(out), model="random:llava-tiny",
                   max_new_tokens=1, batch_size=batch_size, shard_size=4096, workers=(1, 1))
    sampler = Sampler(out)
    sampler.start()
    t0 = time.perf_counter()
    first = run(job)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = run(job)
    rerun = time.perf_counter() - t1
    sampler.stop = True
    ray.shutdown()
    return {"rows": n, "idle_driver_rss_mb": round(idle, 1), "driver_peak_rss_mb": round(sampler.peak, 1),
            "first_file_s": round(sampler.first_file_s or float("nan"), 2), "wall_s": round(wall, 2),
            "rows_per_s": round(n / wall, 1), "graph_rows_per_s": first.items_per_s,
            "rerun_s": round(rerun, 2), "rerun_rows": again.run_rows, "rows_total": again.rows_total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, Path(args.work), args.batch_size)))
        return 0
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as work:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            env.pop("RAY_ADDRESS", None)
            done = subprocess.run([sys.executable, "-m", "pipelines.bench.scale", "--one", str(n), "--work", work,
                                   "--batch-size", str(args.batch_size)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-4000:])
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cols = ["rows", "idle_driver_rss_mb", "driver_peak_rss_mb", "first_file_s", "wall_s", "rows_per_s", "rerun_s",
            "rerun_rows"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"\npeak RSS {b['rows']}/{a['rows']}: {b['driver_peak_rss_mb'] / a['driver_peak_rss_mb']:.3f}x; "
              f"above idle at {b['rows']}: {b['driver_peak_rss_mb'] - b['idle_driver_rss_mb']:.0f} MB; "
              f"rows/s {b['rows']}/{a['rows']}: {b['rows_per_s'] / a['rows_per_s']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
