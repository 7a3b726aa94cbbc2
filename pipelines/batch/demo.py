"""The labeling demo (`bash scripts/demo`): a generated corpus in S3 -> `pipelines.batch.run.run` -> Parquet in S3.

Needs an S3 endpoint in `$AWS_ENDPOINT_URL` (scripts/demo starts one with `infra/s3-local`).
It writes scenes and clips of the default model's world (`restore.zoo.world`; clips
PyAV-encoded, each with a red circle moving one way) to `s3://BUCKET/corpus/`, labels the
images (caption) and the clips (vqa, one question) with a RESTORE-wrapped method, and
prints a few output rows beside the true answers, and each job's summary. Everything else
is the production path: the same `LabelJob`, Ray Data graph and commit protocol.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time

QUESTION = "which direction does the red circle move ?"


def demo_clip(index: int, frames: int = 4):
    """A world clip in which the red circle moves in DIRECTIONS[index % 4]."""
    from restore.zoo import world

    rng = random.Random(f"restore-demo-clip:{index}")
    want = world.DIRECTIONS[index % len(world.DIRECTIONS)]
    while True:
        c = world.random_clip(rng, frames)
        if c.moves.get("red circle") == want:
            return c


def encode_mp4(frames, fps: int = 4) -> bytes:
    """An mp4 (MPEG-4 part 2, high bit rate so the colours survive) of PIL frames."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def write_corpus(bucket: str, images: int, clips: int) -> tuple[str, str, dict[str, str]]:
    """Generate the corpus into s3://bucket/corpus/{images,videos}/: the two prefixes and each file's truth."""
    import fsspec

    from restore.zoo import world

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    truth = {}
    for i in range(images):
        scene = world.random_scene(random.Random(f"restore-demo-scene:{i}"))
        buf = io.BytesIO()
        world.render(scene).save(buf, "PNG")
        uri = f"s3://{bucket}/corpus/images/scene{i:03d}.png"
        fs.pipe_file(uri, buf.getvalue())
        truth[uri] = world.caption(scene)
    for i in range(clips):
        c = demo_clip(i)
        uri = f"s3://{bucket}/corpus/videos/clip{i:02d}.mp4"
        fs.pipe_file(uri, encode_mp4(world.render_clip(c)))
        truth[uri] = c.moves["red circle"]
    return f"s3://{bucket}/corpus/images", f"s3://{bucket}/corpus/videos", truth


def show(title: str, job, summary, rows: int, truth: dict[str, str]) -> None:
    import pyarrow.parquet as pq

    from pipelines.media.storage import OutputStore

    uri = job.output
    store = OutputStore(uri, job.endpoint_url, job.storage_options)
    parts = store.names("part-*.parquet")
    table = pq.read_table(io.BytesIO(store.read_bytes(parts[0])))
    print(f"\n== {title}: {uri} ({len(parts)} part files)")
    print(f"{'uri':<46} {'status':<6} {'tokens':>9} {'prompt':<22} answer")
    for r in table.slice(0, rows).to_pylist():
        tokens = f"{r['kept_tokens']}/{r['visual_tokens']}" if r["status"] == "ok" else "-"
        text = r["answer"] if r["status"] == "ok" else r["error"]
        print(f"{r['uri']:<46} {r['status']:<6} {tokens:>9} {r['prompt']:<22} {text!r}")
        print(f"{'':<46} {'truth':<6} {'':>9} {'':<22} {truth.get(r['uri'], '?')!r}")
    s = summary
    print(f"summary: rows ok {s.rows_ok}, error {s.rows_error}, {s.run_rows} labeled by this run, {s.parts_total} part files; "
          f"{s.items_per_s} items/s over {s.wall_s} s; visual tokens {s.mean_visual_tokens} -> kept "
          f"{s.mean_kept_tokens}; prefill speedup (est.) {s.prefill_speedup_est}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.batch.demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="'default', a local dir, s3://prefix, or random:ARCH")
    # FastV prunes inside the LLM, after the first layers have read the whole image: on the default
    # model it loses least of the methods at 64 of 576 (README, "Synthetic world and default model").
    p.add_argument("--method", default="fastv")
    p.add_argument("--budget", type=int, default=64, help="visual tokens kept per image or frame (of 576)")
    p.add_argument("--bucket", default="restore-demo")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=4, help="frames sampled per clip")
    p.add_argument("--rows", type=int, default=4, help="output rows printed per job")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for the local Ray instance")
    args = p.parse_args(argv)
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        print("demo: set AWS_ENDPOINT_URL (e.g. eval \"$(infra/s3-local --background)\")", file=sys.stderr)
        return 2

    import ray

    from pipelines.batch.config import LabelJob
    from pipelines.batch.run import run

    t0 = time.perf_counter()
    images, videos, truth = write_corpus(args.bucket, args.images, args.clips)
    print(f"corpus: {args.images} scenes in {images}/, {args.clips} clips in {videos}/")
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    out = f"s3://{args.bucket}/labels/{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh output per demo run
    common = dict(model=args.model, method=args.method, budget=args.budget, max_new_tokens=56, batch_size=4,
                  workers=(1, 1), shard_size=8)
    try:
        jobs = [
            ("images, caption", LabelJob(kind="images", input=images, output=f"{out}/images", task="caption", **common)),
            ("videos, vqa", LabelJob(kind="videos", input=videos, output=f"{out}/videos", task="vqa", prompt=QUESTION,
                                     frames=args.frames, **common)),
        ]
        print(f"model {args.model}, method {args.method} + RESTORE, budget {args.budget} tokens per image/frame")
        for title, job in jobs:
            summary = run(job)
            show(title, job, summary, args.rows, truth)
    finally:
        ray.shutdown()
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s; Parquet under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
