"""Flags shared by the `restore` subcommands and the `python -m jobs.*` entrypoints.

One definition of `--model`, `--device`, `--dtype`, `--method`, `--budget`,
`--restore/--no-restore` and RESTORE's knobs, one budget parser, and one way
from those flags to a `ReductionConfig` (checked by `restore.plan.validate`).
Light at import time: nothing here loads torch or Ray.
"""

from __future__ import annotations

import argparse

MODEL_HELP = "'default', a local dir, s3://prefix, or random:ARCH"
DTYPES = ["auto", "float32", "bfloat16", "float16"]
KNOBS = ("gamma", "positions", "calibration")


def parse_budget(text: str) -> int | float:
    """'64' -> 64 visual tokens per image (per frame for video); '0.25' -> a ratio of them."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budget must be a token count (64) or a ratio (0.25), got {text!r}"
        ) from None


def add_model_flags(
    p: argparse.ArgumentParser,
    *,
    model: str | None = "default",
    device: str | None = "cpu",
    dtype: bool = False,
    model_help: str = MODEL_HELP,
) -> None:
    """--model (default `model`), --device (default `device`; None: no such flag), --dtype (when `dtype`)."""
    p.add_argument("--model", default=model, help=model_help)
    if device is not None:
        p.add_argument("--device", default=device, help="cpu, cuda, cuda:N, or auto (cuda when available)")
    if dtype:
        p.add_argument("--dtype", default="auto", choices=DTYPES)


def add_reduction_flags(
    p: argparse.ArgumentParser,
    *,
    method: str | None = "none",
    budget: int | float | None = None,
    restore: bool | None = True,
    required: bool = False,
    knobs: tuple[str, ...] = (),
    method_help: str = "registered reduction method (see `restore methods`)",
) -> None:
    """--method, --budget, --restore/--no-restore, and the RESTORE `knobs` named (gamma, positions, calibration).

    `required` makes --method and --budget required; a default of None leaves the
    field unset (e.g. so that a job file's value stands).
    """
    p.add_argument("--method", default=method, required=required, help=method_help)
    p.add_argument("--budget", type=parse_budget, default=budget, required=required,
                   help="visual tokens kept per image (int) or a ratio (0.25)")
    p.add_argument("--restore", action=argparse.BooleanOptionalAction, default=restore,
                   help="wrap the method with RESTORE (--no-restore: run the base method as its authors did)")
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown RESTORE knobs {sorted(unknown)}; choose from {KNOBS}")
    if "gamma" in knobs:
        p.add_argument("--gamma", type=float, default=0.5, help="share of the budget the base method keeps")
    if "positions" in knobs:
        p.add_argument("--positions", default="median", choices=["original", "median", "compact"])
    if "calibration" in knobs:
        p.add_argument("--calibration", default="size+distance", choices=["off", "size", "size+distance"])


def reduction_from_args(args: argparse.Namespace):
    """The `ReductionConfig` the reduction flags describe, checked by `restore.plan.validate`."""
    from restore import ReductionConfig, RestoreConfig
    from restore.plan import validate

    restore = {"enabled": args.restore if args.restore is not None else True}
    restore.update({k: getattr(args, k) for k in KNOBS if getattr(args, k, None) is not None})
    return validate(ReductionConfig(method=args.method, budget=args.budget, restore=RestoreConfig(**restore)))
