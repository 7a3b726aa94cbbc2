"""Offline batching: static batches vs the continuous-batching scheduler on one corpus (a benchmark, not a test).

The question it answers (issue 17 item 4): should the batch job's inference actors keep static batches
(`Engine.generate` per batch of `--batch-size` rows: every row waits for the longest answer of its batch)
or feed a `Scheduler` capped at the same number of running rows (a finished row's slot is refilled at
the next step)? Both sides answer the same requests (generated scenes, the caption prompt and short
questions mixed, so answers end at different lengths) on the same engine in one process; rounds
alternate A B B A so that drift in a shared machine's speed hits both alike. Prints a table, writes JSON.

    python -m restore.bench.batching --images 64 --batch-size 8 --rounds 3 --out out/batching
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time

from restore.bench.report import write_report
from restore.config import ReductionConfig
from restore.prompts import DEFAULT_CAPTION_PROMPTS
from restore.request import Request

logger = logging.getLogger(__name__)

QUESTIONS = ["how many red shapes are there ?", "is there a blue circle ?", "what is at the top left ?"]


def corpus(engine, n: int, seed: int, reduction: ReductionConfig) -> list[Request]:
    """n requests on generated scenes: every other one the caption prompt (long answers), the rest short
    questions, in a shuffled order as a listing would give them."""
    from restore.zoo import world

    rng = random.Random(seed)
    out = []
    for i in range(n):
        image = world.render(world.random_scene(random.Random(f"restore-bench-batching:{seed}:{i}")))
        text = DEFAULT_CAPTION_PROMPTS["images"] if i % 2 == 0 else QUESTIONS[i % len(QUESTIONS)]
        out.append(Request(engine.media_prompt(text, 1), [image], reduction=reduction))
    rng.shuffle(out)
    return out


def run_static(engine, requests: list[Request], batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    texts = []
    for i in range(0, len(requests), batch_size):
        texts += [r.text for r in engine.generate(requests[i : i + batch_size], max_new_tokens=max_new_tokens)]
    return time.perf_counter() - t0, texts


def run_continuous(engine, requests: list[Request], batch_size: int, max_new_tokens: int) -> tuple[float, list[str]]:
    from restore.config import GenerationConfig

    t0 = time.perf_counter()
    scheduler = engine.scheduler(max_running=batch_size, prefill_group=batch_size)
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    handles = [scheduler.submit(r, generation) for r in requests]
    scheduler.run_until_idle()
    return time.perf_counter() - t0, [h.result().text for h in handles]


def measure(engine, requests: list[Request], batch_size: int, max_new_tokens: int, rounds: int) -> dict:
    sides = {"static": run_static, "continuous": run_continuous}
    run_static(engine, requests[:batch_size], batch_size, max_new_tokens)  # warm-up
    walls: dict[str, list[float]] = {k: [] for k in sides}
    texts: dict[str, list[str]] = {}
    for r in range(rounds):
        order = ["static", "continuous"] if r % 2 == 0 else ["continuous", "static"]
        for name in order:
            wall, texts[name] = sides[name](engine, requests, batch_size, max_new_tokens)
            walls[name].append(wall)
            logger.info("round %d %s: %.2f s", r, name, wall)
    rates = {k: [len(requests) / w for w in v] for k, v in walls.items()}
    ratios = [c / s for s, c in zip(walls["continuous"], walls["static"], strict=True)]
    return {
        "items": len(requests),
        "static_items_per_s": statistics.median(rates["static"]),
        "continuous_items_per_s": statistics.median(rates["continuous"]),
        "continuous_over_static": statistics.median(ratios),  # paired per round
        "walls_s": walls,
        "same_answers": texts["static"] == texts["continuous"],
    }


def table(report: dict) -> str:
    lines = ["| setting | static items/s | continuous items/s | continuous / static (paired) | same answers |",
             "|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['setting']} | {r['static_items_per_s']:.2f} | {r['continuous_items_per_s']:.2f} | "
                     f"{r['continuous_over_static']:.3f} | {r['same_answers']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m restore.bench.batching", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="rows per static batch = running rows at most")
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--method", default="divprune")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="out/batching")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from restore.engine import Engine

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained(args.model)
    settings = {"full": ReductionConfig(), f"{args.method}+RESTORE@{args.budget}":
                ReductionConfig(method=args.method, budget=args.budget)}
    results = []
    for name, reduction in settings.items():
        requests = corpus(engine, args.images, args.seed, reduction)
        results.append({"setting": name, **measure(engine, requests, args.batch_size, args.max_new_tokens,
                                                   args.rounds)})
    report = {"model": args.model, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "rounds": args.rounds, "torch_threads": torch.get_num_threads(), "results": results}
    write_report(args.out, "batching", report, table(report))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
