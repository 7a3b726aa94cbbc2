"""What RESTORE's own steps cost next to the reduced model's prefill (a benchmark, not a test).

For a LLaVA-1.5-shaped input (N = 576 visual tokens of 4096-d features, ~60 text
tokens) and each budget: time distinctive anchor selection + size-weighted merging
(`restore_assignment` around a base method), and the calibration bias build for
the reduced sequence (the per-step mask of `ForwardContext`), against the reduced
LLaVA-1.5-7B prefill. The 7B decoder does not fit a small machine in float32, so
the prefill is timed on `--layers` real 4096-wide Llama-7B layers with random
weights and scaled to 32 layers (prefill cost is linear in depth); the lm_head
on the last token is included once. Medians of `--runs` runs after a warm-up.

    python -m restore.bench.overhead --out out/overhead
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaModel

from restore.bench.report import write_report
from restore.config import RestoreConfig
from restore.methods import get_method
from restore.rectify.anchors import restore_assignment
from restore.rectify.calibration import RopeSpec
from restore.runtime.attention import ForwardContext
from restore.runtime.layout import Layout
from restore.tokens import ImageTokens

TEXT_TOKENS = 60
LLAMA_7B_LAYERS = 32


def _median_ms(fn, runs: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), (max(times) - min(times))


def _layout(budget: int, sizes: torch.Tensor) -> Layout:
    length = TEXT_TOKENS + budget
    visual = torch.zeros(1, length, dtype=torch.bool)
    visual[0, 35 : 35 + budget] = True
    log_size = torch.zeros(1, length)
    log_size[visual] = sizes.log()
    positions = torch.arange(length)[None, :, None].clone()
    positions[0, 35 + budget :, 0] += 576 - budget  # text after the image keeps full-sequence positions
    return Layout(
        valid=torch.ones(1, length, dtype=torch.bool),
        positions=positions,
        log_size=log_size,
        log_first=log_size,
        calibrated=visual,
        distance=torch.tensor([True]),
        c=torch.tensor([2.0]),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="64,128,192")
    parser.add_argument("--method", default="divprune", help="base method wrapped by RESTORE")
    parser.add_argument("--layers", type=int, default=2, help="real 7B layers timed, scaled to 32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="out/overhead")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    method = get_method(args.method)
    options = method.validate_options({})
    # Every signal a method may read, at LLaVA-1.5-7B's shapes (32 heads x 128 for the layer keys).
    tokens = ImageTokens(features=torch.randn(576, 4096), importance=torch.rand(576).softmax(0), grid=(1, 24, 24),
                         keys=torch.randn(576, 1024), text=torch.randn(12, 4096), layer_keys=torch.randn(576, 4096),
                         text_attention=torch.rand(12, 576).softmax(-1))
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
        num_hidden_layers=args.layers, vocab_size=32064, max_position_embeddings=4096,
    )
    llm = LlamaModel(config).eval()
    lm_head = torch.nn.Linear(4096, 32064, bias=False)
    rope = RopeSpec.one_d(llm.rotary_emb.inv_freq)
    rows = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        cfg = RestoreConfig()
        assign_ms, assign_spread = _median_ms(
            lambda b=budget, c=cfg: restore_assignment(tokens, b, method, options, c), args.runs
        )
        a = restore_assignment(tokens, budget, method, options, cfg)
        merge_ms, _ = _median_ms(lambda a=a: a.merge(tokens.features), args.runs)
        layout = _layout(budget, a.sizes())
        length = layout.length

        def bias(layout=layout, length=length):
            ForwardContext(rope, layout).mask(0, length, length, torch.float32)

        bias_ms, _ = _median_ms(bias, args.runs)
        x = torch.randn(1, length, 4096)
        pos = layout.positions[..., 0]

        def prefill(x=x, pos=pos):
            with torch.inference_mode():
                h = llm(inputs_embeds=x, position_ids=pos).last_hidden_state
                lm_head(h[:, -1])

        layers_ms, prefill_spread = _median_ms(prefill, args.runs)
        prefill_ms = layers_ms * LLAMA_7B_LAYERS / args.layers
        overhead = assign_ms + merge_ms + bias_ms
        rows.append(
            {
                "budget": budget,
                "sequence_length": length,
                "assign_ms": assign_ms,
                "assign_spread_ms": assign_spread,
                "merge_ms": merge_ms,
                "bias_ms": bias_ms,
                "restore_ms": overhead,
                "prefill_ms_7b_estimate": prefill_ms,
                "prefill_spread_ms": prefill_spread * LLAMA_7B_LAYERS / args.layers,
                "overhead_fraction": overhead / prefill_ms,
            }
        )
    report = {
        "method": args.method,
        "threads": torch.get_num_threads(),
        "layers_timed": args.layers,
        "runs": args.runs,
        "results": rows,
    }
    header = "| budget | L | anchors+assign ms | merge ms | bias ms | RESTORE ms | 7B prefill ms (est.) | overhead |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['sequence_length']} | {r['assign_ms']:.1f} | {r['merge_ms']:.2f} | "
            f"{r['bias_ms']:.2f} | {r['restore_ms']:.1f} | {r['prefill_ms_7b_estimate']:.0f} | "
            f"{100 * r['overhead_fraction']:.2f}% |"
        )
    table = "\n".join(lines)
    write_report(args.out, "overhead", report, table)
    print(f"RESTORE around {args.method} on 576 x 4096 visual features, {torch.get_num_threads()} threads")
    print(table)
    return report


if __name__ == "__main__":
    main()
