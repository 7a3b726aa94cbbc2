"""`python -m restore.zoo.reproduce`: retrain a model folder's weights from its `training.json`, stage by stage.

Each stage runs `python -m restore.zoo.train` with the arguments it was recorded with, from the
weights of the stage before; only the run's own settings (where to write, device, threads) are
this command's. Stage I checkpoints into WORK/stageI-checkpoint and writes WORK/stageI, so a rerun of
the same command continues an interrupted stage and skips the finished ones. At the end the
weights are compared with the folder's, tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import card, train

logger = logging.getLogger(__name__)


def recorded_stages(model_dir: Path) -> list[dict]:
    """The stages that made `model_dir`'s weights, first to last (`card.stages` of its training.json)."""
    record = model_dir / "training.json"
    if not record.is_file():
        raise ValueError(f"{model_dir}: no training.json, so no recipe to reproduce")
    chain = card.stages(json.loads(record.read_text()))
    for i, st in enumerate(chain, 1):
        if "steps" not in st["args"] or "seed" not in st["args"]:
            raise ValueError(f"{record}: stage {i} records no seed or steps, so it cannot be rerun")
    return chain


def stage_argv(args: dict, init: Path | None, out: Path, checkpoint_dir: Path, run: list[str]) -> list[str]:
    """`python -m restore.zoo.train` arguments for one recorded stage: its recipe, this run's paths and settings."""
    recipe = {k: v for k, v in args.items() if k != "init"}
    return [*card.recipe_argv(recipe), *(["--init", str(init)] if init else []), "--out", str(out),
            "--checkpoint-dir", str(checkpoint_dir), "--resume", *run]


def finished(out: Path, steps: int) -> bool:
    """Whether `out` holds a stage's final weights (an intermediate save from --eval-every has a shorter log)."""
    record = out / "training.json"
    if not (record.is_file() and (out / "model.safetensors").is_file()):
        return False
    return len(json.loads(record.read_text()).get("log", [])) == steps


def compare(reference: Path, reproduced: Path) -> dict:
    """{"tensors", "identical", "max_abs_diff"} between two folders' weights; names present in only one are an error."""
    from safetensors.torch import load_file

    a, b = load_file(str(reference / "model.safetensors")), load_file(str(reproduced / "model.safetensors"))
    if a.keys() != b.keys():
        raise ValueError(f"{reproduced} and {reference} hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() if a[k].numel() else 0.0 for k in a}
    return {"tensors": len(a), "identical": sum(d == 0.0 for d in diffs.values()), "max_abs_diff": max(diffs.values())}


def reproduce(model_dir: Path, chain: list[dict], work_dir: Path, out: Path, run: list[str]) -> dict:
    """Run `chain` (`recorded_stages(model_dir)`) into `work_dir` and `out`; `compare` with `model_dir`'s weights."""
    init = None
    for i, st in enumerate(chain, 1):
        target = out if i == len(chain) else work_dir / f"stage{i}"
        if finished(target, int(st["args"]["steps"])):
            logger.info("stage %d of %d: %s is finished, skipped", i, len(chain), target)
        else:
            logger.info("stage %d of %d: %d steps into %s", i, len(chain), st["args"]["steps"], target)
            argv = stage_argv(st["args"], init, target, work_dir / f"stage{i}-checkpoint", run)
            rc = train.main(argv)
            if rc == 130:  # Ctrl-C: the stage checkpointed its last step
                raise KeyboardInterrupt
            if rc != 0:
                raise RuntimeError(f"stage {i} failed: python -m restore.zoo.train {' '.join(argv)}")
        init = target
    return compare(model_dir, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m restore.zoo.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="the folder whose weights to retrain (default: shipped)")
    p.add_argument("--work-dir", required=True, help="where the stages' weights and checkpoints go")
    p.add_argument("--out", default=None, help="the last stage's model folder (default: WORK_DIR/model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--card-n", type=int, default=0, help="questions per type for the last stage's model card (0: none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model_dir, work_dir = Path(args.model), Path(args.work_dir)
    try:
        chain = recorded_stages(model_dir)
    except ValueError as err:
        p.error(str(err))
    out = Path(args.out) if args.out else work_dir / "model"
    run = ["--device", args.device, "--threads", str(args.threads), "--eval-every", "0", "--card-n", "0"]
    try:
        result = reproduce(model_dir, chain, work_dir, out, run)
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to continue from {work_dir}'s checkpoints")
        return 130
    if args.card_n:
        card.write_card(out, n=args.card_n, device=args.device)
    # Bit-identical on the machine that trained them; elsewhere float rounding differs, so a difference is reported,
    # not failed.
    same = result["identical"] == result["tensors"]
    print(f"{out}: {result['identical']} of {result['tensors']} tensors identical to {model_dir}'s"
          + ("" if same else f"; largest difference {result['max_abs_diff']:.3g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
