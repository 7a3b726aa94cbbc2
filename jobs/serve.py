"""`restore serve`: the online endpoint on Ray Serve (blocks until stopped; ready when GET /readyz is 200).

Also runnable as `python -m jobs.serve ...`. For `serve run` / `serve deploy` use
`infra/serve.yaml` (import path `pipelines.serve:app_builder`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _budget(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a local dir, s3://prefix, or random:ARCH")
    p.add_argument("--method", default="none", help="default reduction method (requests may override)")
    p.add_argument("--budget", type=_budget, default=None, help="visual tokens kept per image (int) or a ratio")
    p.add_argument("--no-restore", action="store_true", help="run the base method without RESTORE by default")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless you mean otherwise)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set RESTORE_API_KEY)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 if CUDA is visible, else 0)")
    p.add_argument("--allow-host", action="append", default=[], help="host http(s) media may be fetched from (repeat)")


def settings_from_args(args: argparse.Namespace):
    from pipelines.serve import DeploymentSettings
    from pipelines.service import ServeSettings

    reduction = {"method": args.method, "budget": args.budget, "restore": {"enabled": not args.no_restore}}
    settings = ServeSettings(
        model=args.model, reduction=reduction, device=args.device, max_batch_size=args.max_batch_size,
        api_key=args.api_key or os.environ.get("RESTORE_API_KEY") or None,
        fetch={"allowed_hosts": args.allow_host},
    )
    gpus = args.num_gpus
    if gpus is None:
        import torch

        gpus = 1.0 if args.device in ("auto", "cuda") and torch.cuda.is_available() else 0.0
    deployment = DeploymentSettings(min_replicas=args.min_replicas, max_replicas=args.max_replicas, num_gpus=gpus)
    return settings, deployment


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import run

    settings, deployment = settings_from_args(args)
    print(f"restore serve: {settings.served_name()} on http://{args.host}:{args.port} "
          f"(method {settings.reduction.method}, budget {settings.reduction.budget}); Ctrl-C stops", flush=True)
    run(settings, deployment, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return cmd_serve(args)


if __name__ == "__main__":
    sys.exit(main())
