"""The `restore` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from jobs import label, serve  # light at import time: Ray loads only when `restore label|serve` runs
from jobs.flags import add_model_flags, add_reduction_flags, parse_budget, reduction_from_args


def cmd_methods(args) -> int:
    from restore.methods import available

    for m in available():
        layers = ",".join(str(k) for k in m.layers(None, m.validate_options({})))
        where = f"in-LLM (layer {layers} of 32)" if m.stage == "llm" else "pre-LLM"
        print(f"{m.name:<14} {where:<22} {m.description}")
    return 0


def cmd_run(args) -> int:
    from restore import Engine, Request

    engine = Engine.from_pretrained(args.model, reduction=reduction_from_args(args), device=args.device, dtype=args.dtype)
    prompt = engine.media_prompt(args.prompt, 1)
    result = engine.generate([Request(prompt, [args.image])], max_new_tokens=args.max_new_tokens)[0]
    print(result.text)
    print(json.dumps(result.stats.as_dict(), indent=2))
    return 0


def cmd_demo(args) -> int:
    """Generate a scene and caption it, full tokens and reduced, side by side, beside the true caption."""
    import random

    from restore import Engine, ReductionConfig, Request
    from restore.plan import validate
    from restore.prompts import DEFAULT_CAPTION_PROMPTS
    from restore.zoo import world

    configs = [ReductionConfig()] + [
        validate(ReductionConfig(method=m, budget=args.budget, restore={"enabled": on}))
        for m in args.methods.split(",")
        for on in (False, True)
    ]
    scene = world.random_scene(random.Random(f"restore-demo:{args.seed}"))
    image = world.render(scene)
    engine = Engine.from_pretrained(args.model, device=args.device)
    prompt = engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1)
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

    reduction = reduction_from_args(args)  # an unknown method fails here, before the model loads
    image = render_token_map(
        args.model, args.image, reduction.method, reduction.budget, reduction.restore.enabled,
        gamma=reduction.restore.gamma, device=args.device, cell=args.cell,
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
    add_model_flags(p, dtype=True)
    add_reduction_flags(p, knobs=("gamma", "positions", "calibration"))
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="a generated scene through full, base and RESTORE-wrapped reduction")
    add_model_flags(p)
    p.add_argument("--methods", default="random,pool,visionzip,divprune", help="registered methods, comma separated")
    p.add_argument("--budget", type=parse_budget, default=64, help="visual tokens kept per image (int) or a ratio")
    p.add_argument("--seed", type=int, default=0)
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
    add_reduction_flags(p, method=None, required=True, knobs=("gamma",),
                        method_help="registered pre-LLM method (see `restore methods`)")
    add_model_flags(p, model_help="'default', a local dir, or random:llava-tiny")
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
