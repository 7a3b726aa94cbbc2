"""`python -m restore.zoo.card`: evaluate a trained world model on a held-out seed and write its model card."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import world

logger = logging.getLogger(__name__)

CARD_SEED = 4321  # held out: training draws its scenes from a separate stream ("restore-train:SEED")


def held_out(model_dir: Path, seed: int, n: int, batch_size: int = 32, device: str = "cpu") -> dict:
    from restore.engine import Engine
    from restore.zoo.evaluate import evaluate

    engine = Engine.from_pretrained(str(model_dir), device=device, dtype="float32")
    return evaluate(engine, world.benchmark(seed, n), batch_size=batch_size)


def render_card(model_dir: Path, result: dict, seed: int, n: int) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    training = json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").exists() else {}
    args, log = training.get("args", {}), training.get("log", [])
    v, t = config["vision_config"], config["text_config"]
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    params = _parameters(model_dir)
    chain = stages(training)
    rows = "\n".join(f"| {k} | {val:.3f} |" for k, val in result["accuracy"].items())
    tail = log[-50:]
    lm = sum(e["lm"] for e in tail) / len(tail) if tail else float("nan")
    patch = sum(e["patch"] for e in tail) / len(tail) if tail else float("nan")
    minutes = log[-1]["seconds"] / 60 if log else float("nan")
    earlier = sum(st.get("seconds") or 0.0 for st in chain[:-1]) / 60
    return f"""# restore default model

A small multimodal model trained from scratch on `restore.zoo.world`, shipped so that
the whole system runs offline and accuracy under visual token reduction can be
measured here (`restore bench accuracy`). It knows nothing outside that world.

## Architecture (stock transformers classes, `LlavaForConditionalGeneration`)
- Vision tower: CLIP-style, {v['image_size']} px input, {v['patch_size']} px patches →
  {(v['image_size'] // v['patch_size']) ** 2} visual tokens per image (24×24, like LLaVA-1.5),
  {v['num_hidden_layers']} layers × {v['hidden_size']}-d, {v['num_attention_heads']} heads; features from the last layer, CLS dropped.
- Projector: LLaVA's two-layer MLP (GELU).
- Language model: Llama, {t['num_hidden_layers']} layers × {t['hidden_size']}-d, {t['num_attention_heads']} heads, RoPE θ = {t.get('rope_theta', (t.get('rope_parameters') or {}).get('rope_theta'))}.
- Tokenizer: word level (`tokenizers`, `tokenizer.json`), {t['vocab_size']} tokens, behind a normaliser (see
  "Prompts"). The chat template is LLaVA's order: `user : <image>… QUESTION assistant :` (system messages are
  left out).
- Video: frames as several images in one prompt; adjacent frames form one clip span for reduction.
- {params / 1e6:.2f} M parameters, {size / 2**20:.1f} MiB of safetensors (float32).

## Data
Generated on the fly by `restore.zoo.world` (seeded): 96×96 scenes of up to 7 shapes
(6 colours × 4 shapes, small and large) in the cells of a 3×3 grid, optional 5×7-bitmap
digits, cluttered grey backgrounds; clips of 4 frames in which shapes move. Question types:
{', '.join(world.QUESTION_TYPES)}, and captions that list every cell.

## Training
{_commands(chain)}

Each scene is one conversation of several questions. Losses: answer-token cross-entropy (mean per
answer), a per-patch classification loss on the tower (colour, shape, size, digit, object centre,
row, column), and attention losses on the answering token: three heads of the first decoder layer read the
words naming what is asked about, the same heads of layer {args.get('look_layer', '?')} look at the patches
those words refer to; two training-only linear probes on that token make the named words reach the look layer and
what it found (colour, shape, size, digit, row, column) reach its output.{_optional_parts(args)} {_timing(chain, len(log), minutes, earlier, args)}; over the last 50 steps{" of the last stage" if len(chain) > 1 else ""} the answer
loss averaged {lm:.3f} and the patch loss {patch:.3f}. `--checkpoint-dir DIR --resume` continues an interrupted run
from its last checkpoint to the same weights.

{_recipe_status(args)}

## Prompts
Text goes through a normaliser inside `tokenizer.json` (`restore.zoo.tokenizer`), so the engine, the chat
template and the OpenAI-compatible server all get it: case and punctuation are normalised, common
phrasings are mapped to the world's words, and words outside the vocabulary are dropped. The world's
own forms keep their token ids. Text typed into `restore run`, `restore label` or the server goes through
`Engine.media_prompt`: placeholders typed in it are taken out and the chat template places the images. A
library `Request` whose prompt carries `<image>` is sent as written, so write the template's words too
(`user : <image> describe the image . assistant :`), or leave the placeholder out. For example:

| prompt | read as |
|---|---|
{_prompt_examples()}

## Held-out accuracy (all 576 tokens)
`python -m restore.zoo.card --seed {seed} --n {n}` (world seed {seed}, {n} questions per type, greedy):

| type | accuracy |
|---|---|
{rows}
| caption (object F1) | {result['caption_f1']:.3f} |
| **average** | **{result['average']:.3f}** |

{_shortfalls(result)}
"""


# The project's bar for the default model, full tokens, held out.
TARGETS = {**{t: 0.90 for t in world.IMAGE_TYPES}, "motion": 0.85, "caption": 0.90}

PROMPT_EXAMPLES = ["Describe the image.", "What is in this picture?", "How many red shapes are there?",
                   "Count the blue objects.", "Is the red circle to the left of the blue square?",
                   "What number is shown in the upper-left corner?", "What color is the small square?",
                   "Which way is the green cross moving?"]

# Recipe parts added after the first shipped weights, aimed at the types below target (issue #19).
V2_FLAGS = {
    "relation_weight": "a probe that must state the column and row order of a relation's two shapes",
    "tally_weight": "a probe that must keep per-colour and per-shape tallies at count questions",
    "kind_weights": "more relation, count and glyph questions",
    "curriculum": "scenes of 2-3 shapes first, widening to 2-7",
    "blank_share": "scenes without shapes, so an empty picture is described as empty",
    "shape": "a larger decoder, within the 50 MB the shipped weights may weigh",
    "relation_words": "head 3 of the first decoder layer reads a relation question's relation word, which the "
                      "query probe asks for at the look layer",
    "motion_compare": "the compare probe also asks where a moving shape ends from where it starts",
    "count_look": "at count questions head 3 of the look layer spreads evenly over the counted shapes (an equal "
                  "share each) and the first token, and a probe on its output states the count",
    "count_high": "a share of the count questions ask about the scene's most frequent colour or shape, whose "
                  "answers of three and more the world's own questions seldom give",
    "count_balance": "a loss that holds the sink's share of that spread look at 1/(n+1) for n counted shapes, "
                     "the balance the answer reads",
}
# The retrain for old weights: later stages from them, flags as `python -m restore.zoo.train` takes them.
V2_PROPOSAL = [
    "--init OLD_WEIGHTS --seed 1 --steps 2000 --lr 5e-4 --warmup 50 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --kind-weights count=2,relation=3,glyph=1.5 --clip-share 0.25 --out STAGE2",
    "--init STAGE2 --seed 2 --steps 1200 --lr 3e-4 --warmup 30 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --count-look --kind-weights count=3,relation=2,glyph=1.5,existence=1.5 "
    "--clip-share 0.2 --out STAGE3",
    "--init STAGE3 --seed 3 --steps 1000 --lr 3e-4 --warmup 30 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --count-look --kind-weights count=4,relation=2,glyph=1.5,existence=1.5 "
    "--clip-share 0.2 --out STAGE4",
    "--init STAGE4 --seed 4 --steps 1000 --lr 3e-4 --warmup 30 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --count-look --count-high 0.5 "
    "--kind-weights count=4,relation=2,glyph=1.5,existence=1.5 --clip-share 0.2 --out STAGE5",
    "--init STAGE5 --seed 5 --steps 1000 --lr 3e-4 --warmup 30 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --count-look --count-weight 2 --count-high 0.5 "
    "--kind-weights count=6,relation=2,glyph=1.5,existence=1.5 --clip-share 0.2 --out STAGE6",
    "--init STAGE6 --seed 6 --steps 1000 --lr 3e-4 --warmup 30 --relation-words --relation-weight 1.0 "
    "--motion-compare --tally-weight 0.5 --count-look --count-weight 2 --count-balance 2 --count-high 0.5 "
    "--kind-weights count=6,relation=2,glyph=1.5,existence=1.5 --clip-share 0.2",
]


def stages(training: dict) -> list[dict]:
    """The runs that made these weights, first to last: each {"args", "steps", "seconds"} (`--init` chains)."""
    chain, node = [], training
    while node:
        chain.append(node)
        node = node.get("init")
    chain.reverse()
    last = training.get("log", [])
    return [{"args": n.get("args", {}), "steps": n.get("steps"), "seconds": n.get("seconds")} for n in chain[:-1]] + [
        {"args": training.get("args", {}), "steps": len(last), "seconds": last[-1]["seconds"] if last else None}]


def _commands(stages: list[dict]) -> str:
    if len(stages) == 1:
        return f"`python -m restore.zoo.train {recipe_flags(stages[0]['args'])}`"
    lines = []
    for i, st in enumerate(stages, 1):
        args = {**st["args"], **({"init": f"STAGE{i - 1}"} if i > 1 else {})}
        lines.append(f"{i}. `python -m restore.zoo.train {recipe_flags(args)} --out STAGE{i}`")
    return f"In {len(stages)} stages, each starting from the weights of the one before (`--init`):\n\n" + "\n".join(lines)


def _timing(stages: list[dict], steps: int, minutes: float, earlier: float, args: dict) -> str:
    where = f"on this machine's {args.get('device', 'cpu').split(':')[0].upper()}"
    if len(stages) == 1:
        return f"{steps} steps in\n{minutes:.0f} min {where}"
    before = sum(st.get("steps") or 0 for st in stages[:-1])
    return f"{before} + {steps} steps in {earlier:.0f} + {minutes:.0f} min\n({earlier + minutes:.0f} min) {where}"


def recipe_argv(args: dict) -> list[str]:
    """The command-line arguments that decide the weights (run-only ones such as --device or --out left out)."""
    from restore.zoo.train import RUN_ARGS

    argv = []
    for k, val in args.items():
        if k in RUN_ARGS or val is None or val == "" or val is False:
            continue
        argv += [f"--{k.replace('_', '-')}"] + ([] if val is True else [str(val)])
    return argv


def recipe_flags(args: dict) -> str:
    return " ".join(recipe_argv(args))


def _optional_parts(args: dict) -> str:
    used = [text for k, text in V2_FLAGS.items() if args.get(k)]
    return (" Also: " + "; ".join(used) + ".") if used else ""


def _recipe_status(args: dict) -> str:
    missing = [k for k in V2_FLAGS if k not in args]
    if not missing:
        return ""
    parts = "\n".join(f"- `--{k.replace('_', '-')}`: {V2_FLAGS[k]}" for k in missing)
    return (f"These weights predate the following recipe options; a retrain with them is pending:\n"
            f"{parts}\n\nTo retrain them with the options, as later stages:\n\n"
            + "\n".join(f"{i}. `python -m restore.zoo.train {flags}`" for i, flags in enumerate(V2_PROPOSAL, 1)))


def _prompt_examples() -> str:
    from restore.zoo.tokenizer import normalise

    return "\n".join(f"| {q} | `{normalise(q)}` |" for q in PROMPT_EXAMPLES)


def _shortfalls(result: dict) -> str:
    bar = (f"image types ≥ {TARGETS[world.IMAGE_TYPES[0]]:.2f}, motion ≥ {TARGETS['motion']:.2f}, "
           f"caption F1 ≥ {TARGETS['caption']:.2f}")
    scores = {**result["accuracy"], "caption": result["caption_f1"]}
    below = [f"{t} {v:.2f} (target {TARGETS[t]:.2f})" for t, v in scores.items() if t in TARGETS and v < TARGETS[t]]
    if not below:
        return f"Every type meets its target ({bar})."
    return f"Below the project's target ({bar}): " + ", ".join(below) + "."


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


def write_card(model_dir: Path, seed: int = CARD_SEED, n: int = 100, device: str = "cpu") -> dict:
    result = held_out(model_dir, seed, n, device=device)
    (model_dir / "README.md").write_text(render_card(model_dir, result, seed, n))
    logger.info("held-out accuracy: %s", json.dumps(result))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m restore.zoo.card", description=__doc__.split(":")[1].strip())
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--seed", type=int, default=CARD_SEED)
    p.add_argument("--n", type=int, default=100, help="questions per type")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    write_card(Path(args.model), args.seed, args.n)
    print((Path(args.model) / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

