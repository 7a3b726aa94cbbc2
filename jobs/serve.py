"""`restore serve`: the online endpoint on Ray Serve (blocks until stopped; ready when GET /readyz is 200).

Also runnable as `python -m jobs.serve ...`. For `serve run` / `serve deploy` use
`infra/serve.yaml` (import path `pipelines.serve:app_builder`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jobs.flags import add_model_flags, add_reduction_flags, reduction_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_flags(p, device="auto")
    add_reduction_flags(p, method_help="default reduction method (requests may override)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless you mean otherwise)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set RESTORE_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=8, help="static batching: requests per batch")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="KV-cache tokens of all running requests together (a reduced request costs its reduced size)")
    p.add_argument("--max-running", type=int, default=32, help="requests decoding at once at most")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds a request may take (then 504)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=1)
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 if CUDA is visible, else 0)")
    p.add_argument("--allow-host", action="append", default=[], help="host http(s) media may be fetched from (repeat)")
    p.add_argument("--allow-s3", action="append", default=[], metavar="PREFIX",
                   help="let requests reference s3:// media under PREFIX, read with the server's credentials, e.g. "
                        "s3://media-bucket/public/ (repeat; a string prefix of bucket/key, end it with '/' for a "
                        "folder; default: no s3:// media at all)")
    p.add_argument("--max-image-side", type=int, default=None, metavar="PX",
                   help="refuse (413) images and video frames whose longer side is over PX pixels (default 8192)")
    p.add_argument("--max-aspect", type=float, default=None, metavar="RATIO",
                   help="refuse (413) images and video frames whose long side / short side is over RATIO "
                        "(default 20.0)")


def settings_from_args(args: argparse.Namespace):
    from pipelines.serve.settings import DeploymentSettings, ServeSettings

    settings = ServeSettings(
        model=args.model, reduction=reduction_from_args(args), device=args.device,
        max_batch_size=args.max_batch_size, max_batch_tokens=args.max_batch_tokens, max_running=args.max_running,
        request_timeout_s=args.request_timeout, api_key=args.api_key or os.environ.get("RESTORE_API_KEY") or None,
        fetch=fetch_from_args(args),
    )
    gpus = args.num_gpus
    if gpus is None:  # one GPU per replica when the model would run on CUDA here
        gpus = 1.0 if settings.model_spec().resolved_device().startswith("cuda") and _cuda_visible() else 0.0
    deployment = DeploymentSettings(min_replicas=args.min_replicas, max_replicas=args.max_replicas, num_gpus=gpus)
    return settings, deployment


def fetch_from_args(args: argparse.Namespace) -> dict:
    """FetchPolicy fields the flags set; limits not given keep FetchPolicy's defaults."""
    fetch: dict = {"allowed_hosts": args.allow_host}
    if args.allow_s3:
        fetch.update(allow_s3=True, s3_allow=args.allow_s3)
    if args.max_image_side is not None:
        fetch["max_side"] = args.max_image_side
    if args.max_aspect is not None:
        fetch["max_aspect"] = args.max_aspect
    return fetch


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve.deployment import run

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
