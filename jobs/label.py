"""`restore label images|videos ...`: parse flags -> LabelJob -> pipelines.batch.run.run.

Also a `ray job submit` entrypoint::

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m jobs.label images --input s3://corpus/imgs --output s3://out/run1 --method divprune --budget 64

(docs/batch.md: the form that works on a laptop, and on a cluster.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.flags import add_model_flags, add_reduction_flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Every flag defaults to None so that only flags actually given override --config.
    p.add_argument("kind", choices=["images", "videos"], help="what the input holds")
    p.add_argument("--config", help="job file (YAML or JSON) with LabelJob fields; flags override it")
    p.add_argument("--input", help="folder, glob, s3://bucket/prefix, or manifest .parquet/.jsonl (uri, id?, question?)")
    p.add_argument("--output", help="local directory or s3:// prefix for the part-*.parquet files")
    p.add_argument("--task", choices=["caption", "vqa"])
    q = p.add_mutually_exclusive_group()
    q.add_argument("--prompt", help="caption prompt, or the one vqa question for every input")
    q.add_argument("--questions", help="vqa: JSONL file of {\"question\": ...} lines asked of every input")
    add_model_flags(p, model=None, device=None)  # the device follows --gpus-per-worker
    add_reduction_flags(p, method=None, restore=None)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--workers", help="MIN,MAX inference actors (autoscaled between them)")
    p.add_argument("--limit", type=int, help="label at most N rows in the output (listing order)")
    p.add_argument("--frames", type=int, help="videos: frames sampled per video")
    p.add_argument("--fps", type=float, help="videos: sample at this rate (at most --frames frames)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--shard-size", type=int, help="rows a write task gathers before writing a part file")


_FIELDS = ("kind", "input", "output", "task", "prompt", "questions", "model", "method", "budget", "restore",
           "batch_size", "gpus_per_worker", "workers", "limit", "frames", "fps", "max_new_tokens", "shard_size")


def job_from_args(args: argparse.Namespace):
    from pipelines.batch.config import LabelJob

    flags = {k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None}
    if args.config:
        return LabelJob.from_file(args.config, **flags)
    return LabelJob(**flags)


def cmd_label(args: argparse.Namespace) -> int:
    from pipelines.batch.run import JobInterrupted, run

    try:
        summary = run(job_from_args(args))
    except JobInterrupted as err:  # Ctrl-C: say what was published and how to resume, no traceback
        print(f"restore label: {err}", file=sys.stderr)
        return 130
    print(json.dumps(summary.model_dump(), indent=2))
    return 0  # error rows are data (status=error), not a failed job


def build_parser() -> argparse.ArgumentParser:
    """The `python -m jobs.label` parser (also used to check entrypoints in infra/ manifests)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.label", description="Offline labeling on Ray Data")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return cmd_label(args)
    except (ValueError, FileNotFoundError, ValidationError) as err:
        print(f"restore label: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
