"""`restore bench accuracy --suite real`: the paper's table on real checkpoints and benchmark Parquet.

Loads the model once, then for each task under --data answers every question with the full model and
with every method × budget × {base, +RESTORE} (greedy, batched through `Engine.generate`). Answers go
to OUT/predictions/<task>/<cell>.jsonl as they come, so a rerun skips finished cells and finishes
half-done ones. Scores are each benchmark's own metric; the table is the paper's: rows methods, columns
budgets, 'base → +RESTORE' as the average % of the full model over the tasks.
Writes accuracy.json, accuracy.md and accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from restore.bench.plots import budget_curves
from restore.bench.real.data import Source, TaskData
from restore.bench.real.tasks import PAPER_TASKS, Example, TaskSpec, task_specs
from restore.config import ReductionConfig
from restore.request import Request

logger = logging.getLogger(__name__)

PAPER_METHODS = "visionzip,divprune,holov,fastv"
PROMPT_VERSION = 1  # bump when a prompt changes: answers recorded under another version are not reused

# (examples, their images, the reduction or None for the full model) → (reply, visual tokens kept) each
Answerer = Callable[[Sequence[Example], Sequence[Image.Image], ReductionConfig | None], list[tuple[str, float]]]


@dataclass(frozen=True)
class Cell:
    """One column of answers: the full model, or a method at a budget, base or +RESTORE."""

    key: str
    method: str | None = None
    budget: int | None = None
    restore: bool = False
    gamma: float | None = None
    config: ReductionConfig | None = None


def cells(args, depth: int, tokens: int) -> list[Cell]:
    from restore.bench.accuracy import settings

    out = [Cell("full")]
    for s in settings(args, depth, tokens):
        kind = f"restore-g{s['gamma']:g}" if s["restore"] else "base"
        out.append(Cell(f"{s['method']}-{s['budget']}-{kind}", s["method"], s["budget"], s["restore"], s["gamma"],
                        s["config"]))
    return out


def pad_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The image centred on a square canvas of `fill` colour, as LLaVA-1.5 was trained and evaluated
    ('pad' aspect ratio), so the processor's centre crop cuts nothing off."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def engine_answerer(engine, max_new_tokens: int, pad: bool = True) -> Answerer:
    """Answers from `engine`, one batch per call; the prompt is placed by `Engine.media_prompt` (the
    processor's chat template when it has one: LLaVA-1.5's 'USER: <image>\\n... ASSISTANT:').
    With `pad`, images are padded to squares of the processor's mean colour first."""
    mean = getattr(getattr(engine.processor, "image_processor", None), "image_mean", None) or [0.5, 0.5, 0.5]
    fill = tuple(int(round(255 * m)) for m in mean[:3])

    def answer(examples, images, reduction):
        prompts = [engine.media_prompt(e.prompt, 1) for e in examples]
        if pad:
            images = [pad_square(im, fill) for im in images]
        requests = [Request(p, images=[im], reduction=reduction) for p, im in zip(prompts, images, strict=True)]
        results = engine.generate(requests, max_new_tokens=max_new_tokens)
        return [(r.text, float(r.stats.kept_tokens)) for r in results]

    return answer


class Store:
    """Answers on disk, one JSON line per question: OUT/predictions/<task>/<cell>.jsonl."""

    def __init__(self, out: Path, signature: dict) -> None:
        self.root = out / "predictions"
        self.root.mkdir(parents=True, exist_ok=True)
        path = out / "run.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != signature:
                diff = {k: (old.get(k), signature.get(k)) for k in set(old) | set(signature) if old.get(k) != signature.get(k)}
                raise ValueError(
                    f"{out} holds answers of a run with other settings {diff} (old, new); pass another --out, "
                    "or delete that folder to start over"
                )
        else:
            path.write_text(json.dumps(signature, indent=2) + "\n")

    def path(self, task: str, cell: Cell) -> Path:
        return self.root / task / f"{cell.key}.jsonl"

    def load(self, task: str, cell: Cell) -> dict[str, dict]:
        path = self.path(task, cell)
        if not path.exists():
            return {}
        done = {}
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that question is answered again
            done[rec["id"]] = rec
        return done

    def append(self, task: str, cell: Cell, records: list[dict]) -> None:
        path = self.path(task, cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")


def evaluate_task(spec: TaskSpec, data: TaskData, examples: list[Example], grid: list[Cell], answer: Answerer,
                  store: Store, args) -> dict[str, dict]:
    """Answer what is missing, then score every cell: {cell key: {"metrics", "kept_tokens"}}."""
    done = {c.key: store.load(spec.name, c) for c in grid}
    ids = {e.id for e in examples}
    pending = [c for c in grid if not ids <= done[c.key].keys()]
    for c in grid:
        if c not in pending:
            logger.info("%s: %s finished earlier (%d answers), skipping", spec.name, c.key, len(examples))
    todo = sum(len(ids - done[c.key].keys()) for c in pending)
    bar = tqdm(total=todo, desc=spec.name, unit="answer", mininterval=2, disable=args.quiet or not todo)
    for start in range(0, len(examples), args.chunk):
        chunk = examples[start : start + args.chunk]
        missing = {c.key: [e for e in chunk if e.id not in done[c.key]] for c in pending}
        needed = {e.id for es in missing.values() for e in es}
        if not needed:
            continue
        images = data.images([e for e in chunk if e.id in needed])
        for c in pending:
            rest = missing[c.key]
            for b in range(0, len(rest), args.batch_size):
                batch = rest[b : b + args.batch_size]
                replies = answer(batch, [images[e.id] for e in batch], c.config)
                records = [{"id": e.id, "reply": text, "kept": kept}
                           for e, (text, kept) in zip(batch, replies, strict=True)]
                store.append(spec.name, c, records)
                done[c.key].update({r["id"]: r for r in records})
                bar.update(len(batch))
    bar.close()
    out = {}
    for c in grid:
        recs = [done[c.key][e.id] for e in examples]
        metrics = spec.score(examples, [r["reply"] for r in recs])
        out[c.key] = {"metrics": metrics, "kept_tokens": sum(r["kept"] for r in recs) / len(recs)}
        logger.info("%s: %s %s = %.2f", spec.name, c.key, spec.metric, metrics["score"])
    return out


def run(args, answer: Answerer | None = None) -> dict:
    """The whole suite; `answer` replaces the engine's answers (tests: oracle and constant answers)."""
    from restore.bench.accuracy import tokens_per_image
    from restore.engine import Engine

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = task_specs(textvqa_ocr=args.textvqa_ocr)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in specs]
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; known: {', '.join(specs)}")
    source = Source(args.data)
    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    depth = len(engine.adapter.text_model.layers)
    n_tokens = tokens_per_image(engine.model)
    grid = cells(args, depth, n_tokens)
    answer = answer or engine_answerer(engine, args.max_new_tokens, args.pad_square)
    signature = {
        "model": args.model, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
        "textvqa_ocr": args.textvqa_ocr, "pad_square": args.pad_square, "prompt_version": PROMPT_VERSION,
        "restore": {"c": args.c, "positions": args.positions, "calibration": args.calibration,
                    "anchors": args.anchors, "uniform_first_layer": args.uniform_first_layer},
    }
    out = Path(args.out)
    store = Store(out, signature)
    per_task: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    counts: dict[str, int] = {}
    for name in names:
        spec = specs[name]
        try:
            data = TaskData(spec, source)
        except FileNotFoundError as err:
            logger.warning("skipping %s: %s", name, err)
            skipped[name] = str(err)
            continue
        examples = data.sample(args.limit, args.seed)
        counts[name] = len(examples)
        logger.info("%s: %d questions from %d file(s)", name, len(examples), len(data.files))
        per_task[name] = evaluate_task(spec, data, examples, grid, answer, store, args)
    if not per_task:
        raise FileNotFoundError(f"no benchmark found under {args.data}: " + "; ".join(skipped.values()))
    return report(args, specs, grid, per_task, counts, skipped, n_tokens)


def report(args, specs: dict[str, TaskSpec], grid: list[Cell], per_task: dict, counts: dict, skipped: dict,
           n_tokens: int) -> dict:
    tasks = list(per_task)
    full = {t: per_task[t]["full"]["metrics"]["score"] for t in tasks}
    results = []
    for c in grid[1:]:
        scores = {t: per_task[t][c.key]["metrics"]["score"] for t in tasks}
        # A task the full model scores 0 on has no "% of full"; it stays out of the average.
        relative = {t: scores[t] / full[t] if full[t] else None for t in tasks}
        defined = [v for v in relative.values() if v is not None]
        record = {
            "method": c.method, "budget": c.budget, "restore": c.restore, "gamma": c.gamma, "cell": c.key,
            "scores": scores, "relative": relative, "average": sum(defined) / len(defined) if defined else None,
            "kept_tokens": sum(per_task[t][c.key]["kept_tokens"] for t in tasks) / len(tasks),
            "layer": c.config.layer, "options": c.config.options,
            "metrics": {t: per_task[t][c.key]["metrics"] for t in tasks},
        }
        if c.restore:
            record["restore_config"] = c.config.restore.model_dump(mode="json", exclude={"enabled"})
        results.append(record)
    return {
        "suite": "real", "model": args.model, "data": args.data, "limit": args.limit, "seed": args.seed,
        "tokens_per_image": n_tokens, "tasks": tasks, "questions": counts, "skipped": skipped,
        "metric": {t: specs[t].metric for t in tasks},
        "full": {"scores": full, "metrics": {t: per_task[t]["full"]["metrics"] for t in tasks}},
        "results": results,
    }


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def table(report: dict) -> str:
    """The paper's table: rows methods, columns budgets, 'base → +RESTORE' in % of the full model averaged
    over the tasks; then every task's own score per cell."""
    budgets = sorted({r["budget"] for r in report["results"]}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in report["results"]))
    n, tasks = report["tokens_per_image"], report["tasks"]
    cell: dict[tuple, list] = {}
    for r in report["results"]:
        cell.setdefault((r["method"], r["budget"]), []).append(r)

    def arrow(rs: list[dict], value) -> str:
        ordered = sorted(rs, key=lambda r: (r["restore"], r["gamma"] or 0))
        return " → ".join(_fmt(value(r)) for r in ordered) if rs else ""

    full = " · ".join(f"{t} {_fmt(report['full']['scores'][t])}" for t in tasks)
    averaged = [t for t in tasks if report["full"]["scores"][t]]
    lines = [f"Full model ({n} visual tokens per image): {full}", "",
             f"Average % of the full model over {', '.join(averaged) or 'no task'} (base → +RESTORE):", "",
             "| method | " + " | ".join(f"{b}/{n}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for m in methods:
        row = [arrow(cell.get((m, b), []), lambda r: 100 * (r["average"] or 0.0)) for b in budgets]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += ["", "Per benchmark, its own score (base → +RESTORE):", "",
              "| method | budget | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks),
              f"| full | {n} | " + " | ".join(_fmt(report["full"]["scores"][t]) for t in tasks) + " |"]
    for m in methods:
        for b in budgets:
            rs = cell.get((m, b), [])
            if rs:
                vals = [arrow(rs, lambda r, t=t: r["scores"][t]) for t in tasks]
                lines.append(f"| {m} | {b} | " + " | ".join(vals) + " |")
    if len(averaged) < len(tasks):
        lines += ["", "Left out of the average (the full model scores 0): "
                  + ", ".join(t for t in tasks if t not in averaged)]
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"].values())]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    results = [r for r in report["results"] if r["gamma"] in (None, 0.5)]
    budget_curves(path, results, lambda r: 100 * (r["average"] or 0.0), 100, f"full ({report['tokens_per_image']})",
                  "% of the full model (average over tasks)",
                  f"{Path(report['model']).name}: {', '.join(report['tasks'])} (solid +RESTORE, dashed base)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from restore.bench.accuracy import add_restore_knobs

    p = argparse.ArgumentParser(prog="restore bench accuracy --suite real", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint: a local dir, s3://prefix, a cached hub id, or random:ARCH")
    p.add_argument("--data", required=True, help="folder or s3://prefix holding <task>/**/*.parquet")
    p.add_argument("--tasks", default=",".join(PAPER_TASKS), help="comma separated (default: the paper's eight)")
    p.add_argument("--limit", type=int, default=None, help="questions per task at most (a fixed random sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--methods", default=PAPER_METHODS, help="comma separated registered methods")
    p.add_argument("--budgets", default="1/3,2/9,1/9",
                   help="tokens kept per image: counts, or fractions of N (LLaVA-1.5: 192,128,64 of 576)")
    p.add_argument("--restore", default="both", choices=["both", "on", "off"])
    p.add_argument("--out", default="out/accuracy-real")
    add_restore_knobs(p)
    p.add_argument("--textvqa-ocr", action=argparse.BooleanOptionalAction, default=True,
                   help="add TextVQA's OCR tokens to the prompt, as LLaVA-1.5's reported number does")
    p.add_argument("--pad-square", action=argparse.BooleanOptionalAction, default=True,
                   help="pad images to squares of the processor's mean colour, as LLaVA-1.5 does")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=256, help="questions whose images are read at a time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for flag in ("limit", "batch_size", "chunk", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None, answer: Answerer | None = None) -> dict:
    args = parse_args(argv)
    result = run(args, answer)
    out = Path(args.out)
    (out / "accuracy.json").write_text(json.dumps(result, indent=2))
    md = table(result)
    (out / "accuracy.md").write_text(md + "\n")
    plot(result, out / "accuracy.png")
    print(md)
    return result
