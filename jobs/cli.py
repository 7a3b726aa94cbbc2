"""The `restore` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from jobs import label, serve  # light at import time: Ray loads only when `restore label|serve` runs


def _reduction(args):
    from restore import ReductionConfig, RestoreConfig
    from restore.plan import validate

    budget = None
    if args.budget is not None:
        budget = float(args.budget) if "." in args.budget else int(args.budget)
    restore = RestoreConfig(
        enabled=not args.no_restore, gamma=args.gamma, positions=args.positions, calibration=args.calibration
    )
    return validate(ReductionConfig(method=args.method, budget=budget, restore=restore))


def _add_reduction_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a local dir, s3://prefix, or random:ARCH")
    p.add_argument("--method", default="none", help="registered method (see `restore methods`)")
    p.add_argument("--budget", default=None, help="visual tokens kept per image (int) or a ratio (0.25)")
    p.add_argument("--no-restore", action="store_true", help="run the base method as its authors did")
    p.add_argument("--gamma", type=float, default=0.5, help="share of the budget the base method keeps")
    p.add_argument("--positions", default="median", choices=["original", "median", "compact"])
    p.add_argument("--calibration", default="size+distance", choices=["off", "size", "size+distance"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=32)


def cmd_methods(args) -> int:
    from restore.methods import available

    for m in available():
        layers = ",".join(str(k) for k in m.layers(None, m.validate_options({})))
        where = f"in-LLM (layer {layers} of 32)" if m.stage == "llm" else "pre-LLM"
        print(f"{m.name:<14} {where:<22} {m.description}")
    return 0


def cmd_run(args) -> int:
    from restore import Engine, Request

    engine = Engine.from_pretrained(args.model, reduction=_reduction(args), device=args.device, dtype=args.dtype)
    result = engine.generate([Request(args.prompt, [args.image])], max_new_tokens=args.max_new_tokens)[0]
    print(result.text)
    print(json.dumps(result.stats.as_dict(), indent=2))
    return 0


def cmd_demo(args) -> int:
    """Generate a scene and caption it, full tokens and reduced, side by side, beside the true caption."""
    import random

    from restore import Engine, ReductionConfig, Request
    from restore.prompts import DEFAULT_CAPTION_PROMPTS
    from restore.zoo import world

    scene = world.random_scene(random.Random(f"restore-demo:{args.seed}"))
    image = world.render(scene)
    engine = Engine.from_pretrained(args.model, device=args.device)
    prompt = engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1)
    configs = [ReductionConfig()] + [
        ReductionConfig(method=m, budget=args.budget, restore={"enabled": on})
        for m in args.methods.split(",")
        for on in (False, True)
    ]
    results = engine.generate([Request(prompt, [image], reduction=c) for c in configs], max_new_tokens=args.max_new_tokens)
    print(f"scene {args.seed}, true caption: {world.caption(scene)!r}")
    print(f"{'method':<10} {'restore':<8} {'tokens':>7} {'text'}")
    for c, r in zip(configs, results):
        print(f"{c.method:<10} {str(r.stats.restore):<8} {r.stats.kept_tokens:>7} {r.text!r}")
    print(f"batch of {len(configs)}: prefill {results[0].stats.prefill_ms:.1f} ms, decode {results[0].stats.decode_ms:.1f} ms")
    return 0


def cmd_viz(args) -> int:
    """Draw the token map of one image under one method and budget, into a PNG."""
    from restore.viz import render_token_map

    budget = float(args.budget) if "." in args.budget else int(args.budget)
    image = render_token_map(
        args.model, args.image, args.method, budget, args.restore, gamma=args.gamma, device=args.device, cell=args.cell
    )
    try:
        image.save(args.output, format="PNG")
    except OSError as err:
        raise ValueError(f"cannot write the token map to {args.output}: {err}") from None
    print(f"wrote {args.output} ({image.width}x{image.height})")
    return 0


def cmd_bench_speed(args) -> int:
    from restore.bench import speed

    speed.main(args.argv)
    return 0


def cmd_bench_accuracy(args) -> int:
    from restore.bench import accuracy

    accuracy.main(args.argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restore", description="Visual token reduction with RESTORE")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the registered reduction methods")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("run", help="answer one prompt about one image")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True, help="text; include <image> or rely on the chat template")
    _add_reduction_flags(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="a generated scene through full, base and RESTORE-wrapped reduction")
    p.add_argument("--model", default="default")
    p.add_argument("--methods", default="random,pool,visionzip,divprune")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("label", help="caption or answer questions about a corpus on Ray Data, into Parquet")
    label.add_arguments(p)
    p.set_defaults(fn=label.cmd_label)

    p = sub.add_parser("serve", help="the OpenAI-compatible endpoint on Ray Serve (blocks until stopped)")
    serve.add_arguments(p)
    p.set_defaults(fn=serve.cmd_serve)

    p = sub.add_parser("bench", help="benchmarks: programs that print a table and write JSON and a plot")
    bench = p.add_subparsers(dest="bench", required=True)
    # The benchmark owns its flags (restore.bench.speed.main parses them); '+' as the only prefix makes
    # this parser pass every '-' flag, --help included, through untouched, and keeps torch unloaded here.
    p = bench.add_parser("speed", help="prefill latency, decode throughput, memory: full vs reduced vs +RESTORE",
                         prefix_chars="+", add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="flags of `python -m restore.bench.speed`")
    p.set_defaults(fn=cmd_bench_speed)
    p = bench.add_parser("accuracy", help="methods x budgets x {base, +RESTORE} on the synthetic world, or on the "
                         "paper's benchmarks from Parquet (--suite real)",
                         prefix_chars="+", add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="flags of `python -m restore.bench.accuracy`")
    p.set_defaults(fn=cmd_bench_accuracy)

    p = sub.add_parser("viz", help="draw which visual tokens a method keeps, merges and drops (LLaVA models)")
    p.add_argument("image", help="image file")
    p.add_argument("--method", required=True, help="registered pre-LLM method (see `restore methods`)")
    p.add_argument("--budget", required=True, help="visual tokens kept (int) or a ratio (0.25)")
    p.add_argument("--restore", action=argparse.BooleanOptionalAction, default=True, help="wrap with RESTORE")
    p.add_argument("--gamma", type=float, default=0.5, help="share of the budget the base method keeps")
    p.add_argument("--model", default="default", help="'default', a local dir, or random:llava-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cell", type=int, default=None, help="pixels per token side in the drawing")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.set_defaults(fn=cmd_viz)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, ValidationError) as err:
        print(f"restore: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
