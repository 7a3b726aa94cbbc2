"""`python -m restore.bench.attention`: RESTORE's biased attention, dense float mask + SDPA vs flex_attention.

One decoder layer's attention at real shapes (LLaVA-1.5-7B: 32 heads of 128), prefill over a prompt of
`--text` text tokens and `--visual` visual tokens (576 all, 64 reduced; the reduced ones calibrated with
sizes and the distance term), batch sizes `--batch-sizes`, left-padded to different lengths. Both paths
run interleaved on the same inputs:

- dense: `ForwardContext.mask` (built once per stage and reused by its layers: its time is reported
  apart) and `scaled_dot_product_attention` with that float mask (the engine's path);
- flex: `restore.runtime.flex` tables and `flex_attention` with the score_mod, compiled on CUDA.

Reports median ms per call (CUDA events on a GPU), the mask build, and the largest difference of the
outputs on real rows. A program, not a test: prints a table, writes JSON and Markdown.

    python -m restore.bench.attention --device cuda --out out/attention
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from restore.bench.report import write_report
from restore.rectify.calibration import RopeSpec
from restore.runtime.attention import ForwardContext
from restore.runtime.flex import bias_tables, flex_biased_attention
from restore.runtime.layout import Layout


def layout(batch: int, text: int, visual: int, kept: int | None, device) -> Layout:
    """A left-padded batch: sample i's prompt is i % 4 text tokens shorter; the visual block (kept tokens
    when reduced, with sizes N/kept on average) sits after a 5-token system prefix."""
    length = text + (kept or visual)
    valid = torch.ones(batch, length, dtype=torch.bool)
    for i in range(batch):
        valid[i, : i % 4] = False
    positions = (torch.cumsum(valid.long(), 1) - 1).clamp(min=0)
    calibrated = torch.zeros(batch, length, dtype=torch.bool)
    log_size = torch.zeros(batch, length)
    if kept:
        calibrated[:, 5 : 5 + kept] = True
        calibrated &= valid
        sizes = torch.distributions.Dirichlet(torch.ones(kept)).sample((batch,)) * visual
        log_size[:, 5 : 5 + kept] = sizes.clamp(min=1.0).log()
        positions[:, 5 + kept :] += visual - kept  # kept tokens at original places: text after the full image
    return Layout(valid=valid.to(device), positions=positions[..., None].to(device), log_size=log_size.to(device),
                  log_first=log_size.to(device), calibrated=calibrated.to(device),
                  distance=torch.ones(batch, dtype=torch.bool, device=device),
                  c=torch.full((batch,), 2.0, device=device))


def _timer(device: str):
    if device.startswith("cuda"):
        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return out, start.elapsed_time(end)
    else:
        def timed(fn):
            t0 = time.perf_counter()
            out = fn()
            return out, (time.perf_counter() - t0) * 1e3
    return timed


def measure(batch: int, kept: int | None, args, kernel) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    heads, dim = args.heads, args.head_dim
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    rope = RopeSpec.one_d(inv)
    lay = layout(batch, args.text, args.visual, kept, device)
    n = lay.length
    q, k, v = (torch.randn(batch, heads, n, dim, device=device, dtype=dtype) for _ in range(3))
    timed, scale = _timer(device), dim**-0.5
    times: dict[str, list[float]] = {"mask": [], "dense": [], "flex": []}
    for r in range(args.runs + 1):  # round 0 warms up (and compiles flex)
        ctx = ForwardContext(rope, lay)
        mask, t_mask = timed(lambda ctx=ctx: ctx.mask(1, n, n, dtype))
        dense, t_dense = timed(lambda m=mask: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=m, scale=scale))
        tables = bias_tables(rope, lay, first=False, q_len=n, prefill=True)
        flex, t_flex = timed(lambda t=tables: flex_biased_attention(q, k, v, t, scale=scale, kernel=kernel))
        if r:
            times["mask"].append(t_mask)
            times["dense"].append(t_dense)
            times["flex"].append(t_flex)
    rows = lay.valid[:, None, :, None].expand_as(dense)
    diff = (dense.float() - flex.float())[rows].abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "tokens": n, "setting": f"kept {kept}" if kept else f"all {args.visual}",
            "mask_ms": med["mask"], "dense_ms": med["dense"], "flex_ms": med["flex"],
            "flex_over_dense": med["dense"] / med["flex"] if med["flex"] > 0 else None, "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m restore.bench.attention", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--text", type=int, default=60, help="text tokens of the prompt")
    p.add_argument("--visual", type=int, default=576, help="visual tokens of the image")
    p.add_argument("--kept", type=int, default=64, help="visual tokens kept in the reduced setting")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", default="out/attention")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    from torch.nn.attention.flex_attention import flex_attention

    # Eager flex_attention is a reference implementation; the fused kernel comes from torch.compile.
    kernel = torch.compile(flex_attention) if args.device.startswith("cuda") else flex_attention
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for kept in (None, args.kept):
            r = measure(batch, kept, args, kernel)
            rows.append(r)
            print(f"batch {batch:>3} {r['setting']:<9} L={r['tokens']:<4} mask {r['mask_ms']:.3f} ms  dense "
                  f"{r['dense_ms']:.3f} ms  flex {r['flex_ms']:.3f} ms  diff {r['max_abs_diff']:.2e}", flush=True)
    report = {"device": args.device, "dtype": args.dtype, "heads": args.heads, "head_dim": args.head_dim,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "results": rows}
    lines = [f"{report['gpu'] or args.device}, {args.dtype}, {args.heads} heads x {args.head_dim}, median of "
             f"{args.runs} runs", "",
             "| batch | visual tokens | keys | mask build ms | dense SDPA ms | flex ms | dense / flex | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['setting']} | {r['tokens']} | {r['mask_ms']:.3f} | {r['dense_ms']:.3f} | "
                     f"{r['flex_ms']:.3f} | {r['flex_over_dense']:.2f} | {r['max_abs_diff']:.2e} |")
    write_report(args.out, "attention", report, "\n".join(lines))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
