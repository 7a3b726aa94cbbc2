"""`restore bench accuracy`: methods × budgets × {base, +RESTORE} on the synthetic world.

Every setting answers the same held-out items (`restore.zoo.world.benchmark`)
with greedy decoding: exact-match accuracy per question type, object-level F1
on captions, their average, and the share of the full-token model's average
kept. Budgets are visual tokens kept per image (per frame for clips); the
defaults are LLaVA-1.5's 192/128/64 of 576, written as 1/3, 2/9, 1/9 of N so
they carry over to any tower. In-LLM methods act at their paper's layer
scaled to the model's depth (FastV's K=2 of 32 becomes 1 of 4).
Writes accuracy.json, accuracy.md and accuracy.png; the same flags give the
same JSON.
"""

from __future__ import annotations

import argparse
import logging
from fractions import Fraction
from pathlib import Path

import torch
from tqdm import tqdm

from restore.bench.plots import budget_curves
from restore.bench.report import write_report
from restore.config import ReductionConfig, RestoreConfig
from restore.methods import available, get_method
from restore.plan import fit_layers
from restore.zoo import world
from restore.zoo.evaluate import answer, score

logger = logging.getLogger(__name__)


def parse_budgets(text: str, tokens: int) -> list[int]:
    """'1/3,2/9,64' → tokens kept per image: fractions of `tokens`, or plain counts."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = Fraction(part)
        except ValueError:
            raise ValueError(f"--budgets: {part!r} is neither a count nor a fraction like 1/9") from None
        n = round(value * tokens) if value < 1 or "/" in part or "." in part else int(value)
        if not 1 <= n < tokens:
            raise ValueError(f"--budgets: {part!r} gives {n} tokens; it must keep 1..{tokens - 1} of {tokens}")
        out.append(n)
    if not out:
        raise ValueError("--budgets is empty")
    return out


def tokens_per_image(model) -> int:
    vc = model.config.vision_config
    return (vc.image_size // vc.patch_size) ** 2


def settings(args, depth: int, tokens: int) -> list[dict]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else [
        m.name for m in available() if m.name != "none"
    ]
    for m in methods:
        get_method(m)  # unknown names fail here, before any work
    budgets = parse_budgets(args.budgets, tokens)
    flags = {"on": [True], "off": [False], "both": [False, True]}[args.restore]
    gammas = [float(g) for g in str(args.gamma).split(",")]
    out = []
    for m in methods:
        for b in budgets:
            for on in flags:
                for g in gammas if on else [None]:
                    rc = RestoreConfig(
                        enabled=on, gamma=g if g is not None else 0.5, c=args.c, positions=args.positions,
                        calibration=args.calibration, anchors=args.anchors,
                        uniform_first_layer=args.uniform_first_layer,
                    )
                    cfg = fit_layers(ReductionConfig(method=m, budget=b, restore=rc), depth)
                    out.append({"method": m, "budget": b, "restore": on, "gamma": g, "config": cfg})
    return out


def run(args) -> dict:
    from restore.engine import Engine

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    depth = len(engine.adapter.text_model.layers)
    n_tokens = tokens_per_image(engine.model)
    grid = settings(args, depth, n_tokens)
    types = [t.strip() for t in args.types.split(",")] if args.types else None
    items = world.benchmark(args.seed, args.n, types)
    bar = tqdm(total=len(items) * (len(grid) + 1), desc="accuracy", mininterval=2, disable=args.quiet)

    def evaluate(reduction):
        preds, kept = answer(engine, items, reduction, args.batch_size, progress=bar.update)
        return score(items, preds), sum(kept) / len(kept)

    full, _ = evaluate(None)
    results = []
    for s in grid:
        res, kept = evaluate(s["config"])
        cfg = s["config"]
        record = {
            "method": s["method"], "budget": s["budget"], "restore": s["restore"],
            "accuracy": res["accuracy"], "caption_f1": res["caption_f1"], "average": res["average"],
            "average_se": res["average_se"],
            "relative": res["average"] / full["average"] if full["average"] else 0.0,
            "kept_tokens": kept,
            "layer": cfg.layer, "options": cfg.options,
        }
        if s["restore"]:
            record["restore_config"] = cfg.restore.model_dump(mode="json", exclude={"enabled"})
        results.append(record)
    bar.close()
    return {
        "model": args.model, "seed": args.seed, "n": args.n, "tokens_per_image": n_tokens,
        "types": sorted({it.type for it in items}, key=(world.QUESTION_TYPES + ["caption"]).index),
        "full": full, "results": results,
    }


def table(report: dict) -> str:
    """Rows: methods; columns: budgets; cells: average accuracy 'base → +RESTORE' (% of full in brackets)."""
    budgets = sorted({r["budget"] for r in report["results"]}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    n = report["tokens_per_image"]
    cell: dict[tuple, list] = {}
    for r in report["results"]:
        cell.setdefault((r["method"], r["budget"]), []).append(r)
    head = "| method | " + " | ".join(f"{b}/{n}" for b in budgets) + " |"
    se = [r["average_se"] for r in report["results"] if "average_se" in r]
    spread = f"; standard error of a cell's average {min(se):.3f}–{max(se):.3f}" if se else ""
    lines = [f"Full model ({n} tokens): average {report['full']['average']:.3f}{spread}", "", head,
             "|---|" + "---|" * len(budgets)]
    for m in methods:
        row = []
        for b in budgets:
            rs = cell.get((m, b), [])
            base = [r for r in rs if not r["restore"]]
            plus = [r for r in rs if r["restore"]]
            parts = [f"{r['average']:.3f}" for r in base[:1]] + [f"{r['average']:.3f}" for r in plus]
            rel = (plus or base)[-1]["relative"] if rs else None
            row.append(" → ".join(parts) + (f" ({100 * rel:.0f}%)" if rel is not None else ""))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += ["", "Per type (base → +RESTORE, at each budget):", "",
              "| method | budget | " + " | ".join(report["types"]) + " |",
              "|---|---|" + "---|" * len(report["types"])]
    for m in methods:
        for b in budgets:
            rs = cell.get((m, b), [])
            if not rs:
                continue
            vals = []
            for t in report["types"]:
                seq = [_value(r, t) for r in sorted(rs, key=lambda r: r["restore"])]
                vals.append(" → ".join(f"{v:.2f}" for v in seq))
            lines.append(f"| {m} | {b} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _value(record: dict, kind: str) -> float:
    return record["caption_f1"] if kind == "caption" else record["accuracy"][kind]


def plot(report: dict, path: Path) -> None:
    results = [r for r in report["results"] if r.get("restore_config", {}).get("gamma", 0.5) == 0.5]
    title = f"{Path(report['model']).name}: solid +RESTORE, dashed base (seed {report['seed']}, n={report['n']})"
    budget_curves(path, results, lambda r: r["average"], report["full"]["average"],
                  f"full ({report['tokens_per_image']})", "average accuracy", title)


def add_restore_knobs(p: argparse.ArgumentParser) -> None:
    """The flags of RESTORE's knobs, shared by both accuracy suites."""
    g = p.add_argument_group("RESTORE knobs (the paper's ablations)")
    g.add_argument("--gamma", default="0.5", help="share of the budget the base method keeps; a comma list sweeps")
    g.add_argument("--c", type=float, default=2.0)
    g.add_argument("--positions", default="median", choices=["original", "median", "compact"])
    g.add_argument("--calibration", default="size+distance", choices=["off", "size", "size+distance"])
    g.add_argument("--anchors", default="distinctive", choices=["distinctive", "uniform"])
    g.add_argument("--uniform-first-layer", action=argparse.BooleanOptionalAction, default=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="restore bench accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="synthetic", choices=SUITES,
                   help="'real': the paper's benchmarks from Parquet (see --suite real --help)")
    p.add_argument("--model", default="default", help="'default' (the shipped model), a local dir or s3://prefix")
    p.add_argument("--methods", default=None, help="comma separated (default: every registered method but none)")
    p.add_argument("--budgets", default="1/3,2/9,1/9", help="tokens kept per image: counts or fractions of N")
    p.add_argument("--restore", default="both", choices=["both", "on", "off"])
    p.add_argument("--seed", type=int, default=1234, help="world seed of the held-out items")
    p.add_argument("--n", type=int, default=50, help="questions per type (and captions)")
    p.add_argument("--types", default=None, help="question types to ask (default: all, and captions)")
    p.add_argument("--out", default="out/accuracy")
    add_restore_knobs(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    return args


SUITES = ["synthetic", "real"]


def main(argv: list[str] | None = None) -> dict:
    suite = argparse.ArgumentParser(add_help=False)
    suite.add_argument("--suite", default="synthetic", choices=SUITES)
    known, rest = suite.parse_known_args(argv)
    if known.suite == "real":
        from restore.bench.real.run import main as real_main

        return real_main(rest)
    args = parse_args(argv)
    report = run(args)
    md = table(report)
    out = write_report(args.out, "accuracy", report, md)
    plot(report, out / "accuracy.png")
    print(md)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
