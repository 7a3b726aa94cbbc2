"""`python -m restore.zoo.train`: train the default model from a seed on the synthetic world.

Each step is either an image batch (scenes, each with a conversation of several
questions and at most one caption) or a clip batch (clips, each with a motion
question about every moving shape). One conversation per image means the 576
visual tokens go through the decoder once for several supervised answers, which
is most of what makes a CPU training budget enough. Losses:
- next-token cross-entropy on the answer tokens (mean per answer, so a long
  caption weighs as much as a yes/no);
- a dense per-patch loss on the tower's output (colour, shape, size, digit,
  object centre, patch row and column), which teaches the tower what is where
  within a few hundred steps;
- attention losses that build the route from question to patches: in the
  first decoder layer, heads 0-2 of the token that predicts an answer read the
  words naming what is asked about (both shapes of a relation, then each one;
  in captions, the cell's name); in the look layer the same heads look at the
  patches those words refer to (heads 1 and 2: the first and second shape of a
  relation, or the moving shape in the first and last frame). Binding question
  words to image regions is the slow part of learning from answers alone (the
  answer loss stalls at the answer priors); these supervise it directly.
- a linear probe on the answering token at the look layer that must name the
  gathered words (`QueryHead`): it makes what the first layer reads reach the
  look layer's queries;
- a linear probe on the look layer's output at the same token that must name
  what each supervised head looked at (`ReadoutHead`: colour, shape, size,
  digit, row and column of the target patches): it makes what the look layer
  finds reach the residual stream.
The patch heads and the probes are training-only and are not shipped.

Options aimed at the types the first shipped weights missed (all off by default):
- `--relation-weight`: a probe at the answering token of relation questions, at hidden state
  `--probe-layer`, must state the column order and the row order of the two named shapes
  (`RelationHead`): the look heads bring both places, this asks for their comparison;
- `--tally-weight`: a probe at the answering token of count questions must state how many shapes of
  each colour and of each shape the scene holds (`TallyHead`);
- `--relation-words`: head 3 of the first decoder layer gathers a relation question's relation word
  (the probe's order alone left relation at chance: the answer needs both);
- `--motion-compare`: the relation probe also asks where a moving shape ends from where it starts;
- `--count-look`: at count questions head 3 of the look layer spreads evenly over the counted shapes
  (an equal share each, whatever their size) and the sequence's first token, the sink, and a probe
  on the look layer's output must state the count (`CountHead`): the sink's share, 1/(n+1), is the
  count;
- `--kind-weights` (more of some question kinds), `--curriculum` (scenes of 2-3 shapes first),
  `--blank-share` (scenes without shapes), `--shape` (a larger model);
- `--count-high`: a share of the count questions ask about the scene's most frequent colour or shape,
  so that answers of three and four, rare among the world's own questions, are trained on more often;
- `--count-balance`: a loss on the sink's log-odds in the spread look of `--count-look`, which must be
  log(1/n) for n counted shapes (`sink_balance`): the answer reads the count from it, and the spread's
  cross-entropy hardly sees it;
- `--init DIR`: start from a model folder's weights, as a later stage of a staged recipe (the shipped
  model is seven stages: the first recipe, then the relation, motion and tally options, then
  `--count-look`, then a longer count stage, then `--count-high`, then `--count-weight 2`, then
  `--count-balance 2`, each from the weights of the one before).

Runs are resumable: with `--checkpoint-dir`, `latest.pt` (model, probes, optimizer, step, the learning
rate's step, RNG states, log) is replaced atomically every `--checkpoint-every` steps; `--resume`
continues from it to the weights an uninterrupted run ends with (same device and thread count), and
`--stop-after` ends a run early at a checkpoint (e.g. to fit a time slot), as Ctrl-C does after the step in
progress (exit status 130). `--device cuda` trains on a
GPU (float32) and evaluates the card there.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import architecture, world

logger = logging.getLogger(__name__)

IMAGE_KINDS = world.IMAGE_TYPES + ["caption"]
TOKENS = world.GRID * world.GRID


class PatchHeads(nn.Module):
    """Linear classifiers over the tower's patch features; used in training only, not shipped.

    Object patches are a small minority (a glyph covers ~12 of 576), so for the object heads the
    loss averages object patches and background patches separately and weighs them equally: a
    mean over all patches is low long before the rare classes are learned."""

    OBJECT_HEADS = ("colour", "shape", "size", "digit")

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in world.LABEL_HEADS.items()})

    def forward(self, feats: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = []
        for k, h in self.heads.items():
            ce = F.cross_entropy(h(feats).flatten(0, 1), labels[k].flatten(), reduction="none")
            if k in self.OBJECT_HEADS:
                on = labels[k].flatten() > 0
                parts = [ce[on].mean()] if bool(on.any()) else []
                parts += [ce[~on].mean()] if bool((~on).any()) else []
                losses.append(torch.stack(parts).mean())
            else:
                losses.append(ce.mean())
        return torch.stack(losses).mean()


@dataclass
class Turn:
    question: str
    answer: str
    # (index of the answer token being predicted, head, weight per visual token of the conversation)
    looks: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    # (index of the answer token being predicted, head, "question" or "answer", indices of the words to read)
    gathers: list[tuple[int, int, str, list[int]]] = field(default_factory=list)
    # targets of the optional probes at the token that predicts the first answer word (`probe_targets`)
    probes: dict[str, np.ndarray] = field(default_factory=dict)
    # (index of the answer token being predicted, head, weight per visual token): looks that must spread
    # evenly over these patches and the sink (`count_looks`)
    spreads: list[tuple[int, int, np.ndarray]] = field(default_factory=list)


@dataclass
class Conversation:
    images: list
    labels: list[dict[str, np.ndarray]]
    turns: list[Turn]


def _mask(labels: dict[str, np.ndarray], items: set[int]) -> np.ndarray:
    return np.isin(labels["item"].reshape(-1), np.array(sorted(items), dtype=np.int64) + 1).astype(np.float32)


def _named(scene: world.Scene, name: str) -> set[int]:
    return {i for i, o in enumerate(scene.objects) if o.name == name}


def caption_cells(answer: str) -> list[tuple[int, list[int]]]:
    """Per cell of a caption: the index of its ":" word and the indices of the place words before it."""
    cells, start = [], 0
    for j, w in enumerate(answer.split()):
        if w == ",":
            start = j + 1
        elif w == ":":
            cells.append((j, list(range(start, j))))
    return cells


def look_targets(scene: world.Scene, labels, kind: str, question: str, answer: str) -> list:
    if kind == "caption":
        at_place = {o.place: i for i, o in enumerate(scene.objects)}
        if scene.glyph is not None:
            at_place[scene.glyph.place] = len(scene.objects)
        words = answer.split()
        places = [(j, " ".join(words[i] for i in idx)) for j, idx in caption_cells(answer)]
        return [(j + 1, 0, _mask(labels, {at_place[place]})) for j, place in places if place in at_place]
    refs = world.referents(scene, question)
    if not refs:
        return []
    looks = [(0, 0, _mask(labels, refs))]
    if kind == "relation":  # "is the A-colour A-shape ... the B-colour B-shape ?"
        words = question.split()
        looks += [(0, 1, _mask(labels, _named(scene, " ".join(words[2:4])))),
                  (0, 2, _mask(labels, _named(scene, " ".join(words[-3:-1]))))]
    return looks


COUNT_HEAD = 3


def count_looks(scene: world.Scene, labels: dict[str, np.ndarray], question: str) -> list[tuple[int, int, np.ndarray]]:
    """The spread look of a count question: head `COUNT_HEAD` of the look layer on each counted shape, weight 1
    per shape shared evenly over its patches (and 1 on the sink, which `look_attention` adds with `spread`). An
    average over the shapes says what they are like whatever their number; with a share per shape beside the
    sink's, the sink's share is 1/(n+1). A shape's patches, not its centre patch: after 400 steps the tower still found
    the centre patch among its top guesses a third of the time, while what covers a patch it knows."""
    weights = np.zeros(TOKENS, dtype=np.float32)
    for i in world.referents(scene, question):
        mask = _mask(labels, {i})
        weights += mask / max(mask.sum(), 1.0)
    return [(0, COUNT_HEAD, weights)]


DESCRIPTIVE = set(world.COLOURS) | set(world.SHAPES) | set(world.PLURALS.values()) | set(world.SIZES)


RELATION_WORDS = sorted({w for rel in world.RELATIONS for w in rel.split()})


def gather_targets(kind: str, question: str, answer: str,
                   relation_words: bool = False) -> list[tuple[int, int, str, list[int]]]:
    """The words the answering token must read first: what names the shapes (or the place) asked about.

    Heads 0-2 of the first decoder layer gather them, so that the look layer's queries carry them. With
    `relation_words`, head 3 also gathers a relation question's relation word ("left of", "above", ...)."""
    words = question.split()
    if kind == "caption":
        return [(j + 1, 0, "answer", idx) for j, idx in caption_cells(answer)]
    if kind == "relation":
        first, second = [2, 3], [len(words) - 3, len(words) - 2]
        out = [(0, 0, "question", first + second), (0, 1, "question", first), (0, 2, "question", second)]
        if relation_words:
            out.append((0, 3, "question", list(range(4, len(words) - 4))))
        return out
    if kind == "motion":
        name = [4, 5]
        return [(0, h, "question", name) for h in range(3)]
    if kind == "glyph":
        return [(0, 0, "question", list(range(words.index("the") + 1, len(words) - 1)))]
    return [(0, 0, "question", [i for i, w in enumerate(words) if w in DESCRIPTIVE])]


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _order(a: world.Obj, b: world.Obj) -> np.ndarray:
    """Column order and row order of `a` from `b` by cell (0 left of / above, 1 same, 2 right of / below)."""
    (ar, ac), (br, bc) = (divmod(world.PLACES.index(o.place), 3) for o in (a, b))
    return np.array([_sign(ac - bc) + 1, _sign(ar - br) + 1])


def _tally(scene: world.Scene, by_colour: bool) -> dict[str, int]:
    """How many shapes of each colour (in `COLOUR_NAMES` order), or of each shape (`SHAPES` order)."""
    names = world.COLOUR_NAMES if by_colour else world.SHAPES
    return {x: sum((o.colour if by_colour else o.shape) == x for o in scene.objects) for x in names}


def probe_targets(scene: world.Scene, kind: str, question: str, count_look: bool = False) -> dict[str, np.ndarray]:
    """What the optional probes read at the answering token (see `RelationHead`, `TallyHead`, `CountHead`).

    relation: where the first named shape is from the second, by cell: column order (0 left of, 1 same
    column, 2 right of) and row order (0 above, 1 same row, 2 below); the answer follows from these and the
    relation word. count: how many shapes of each colour, then of each shape, the scene holds (tally) and,
    with `count_look`, how many the question counts."""
    if kind == "relation":
        words = question.split()
        a = next(o for o in scene.objects if o.name == " ".join(words[2:4]))
        b = next(o for o in scene.objects if o.name == " ".join(words[-3:-1]))
        return {"compare": _order(a, b)}
    if kind == "count":
        out = {"tally": np.array([*_tally(scene, True).values(), *_tally(scene, False).values()])}
        if count_look:
            out["count"] = np.array([len(world.referents(scene, question))])
        return out
    return {}


def most_counted(scene: world.Scene, rng: random.Random) -> tuple[str, str]:
    """The count question with the largest answer: how many of the scene's most frequent colour, or shape."""
    by_colour = rng.random() < 0.5
    tally = _tally(scene, by_colour)
    top = rng.choice([x for x, k in tally.items() if k == max(tally.values())])
    things = f"{top} shapes" if by_colour else world.PLURALS[top]
    return f"how many {things} are there ?", world.NUMBERS[tally[top]]


def image_conversation(rng: random.Random, turns: int, objects: tuple[int, int] = (2, 7),
                       weights: list[float] | None = None, relation_words: bool = False,
                       count_look: bool = False, count_high: float = 0.0) -> Conversation:
    """One scene of `objects` shapes and up to `turns` distinct questions, of kinds drawn with `weights`
    (over `IMAGE_KINDS`; None: uniform); `relation_words` as in `gather_targets`; with `count_look`, count
    questions carry `count_looks` and the count probe's target; a `count_high` share of the count questions
    ask about the most frequent colour or shape (`most_counted`), where the world's own questions mostly
    have one or two for an answer."""
    scene = world.random_scene(rng, objects)
    labels = world.patch_labels(scene)
    out: list[Turn] = []
    for _ in range(20 * turns):
        if len(out) == turns:
            break
        kind = rng.choices(IMAGE_KINDS, weights)[0] if weights else rng.choice(IMAGE_KINDS)
        # draws nothing when off: the stream stays the same
        high = kind == "count" and count_high > 0 and rng.random() < count_high
        qa = most_counted(scene, rng) if high else world.ask(scene, kind, rng)
        if qa is None or any(t.question == qa[0] for t in out):
            continue
        spreads = count_looks(scene, labels, qa[0]) if count_look and kind == "count" else []
        out.append(Turn(*qa, look_targets(scene, labels, kind, *qa), gather_targets(kind, *qa, relation_words),
                        probe_targets(scene, kind, qa[0], count_look), spreads))
    return Conversation([world.render(scene)], [labels], out)


def clip_conversation(rng: random.Random, frames: int, motion_compare: bool = False) -> Conversation:
    """A clip with a motion question about each moving shape. With `motion_compare`, each turn also asks the
    compare probe where the shape ends from where it starts (column and row order of its centre in the last
    frame from the first, as `_order` does for a relation's two shapes)."""
    clip = world.random_clip(rng, frames)
    labels = [world.patch_labels(f) for f in clip.frames]
    names = sorted(clip.moves)
    rng.shuffle(names)
    out = []
    for name in names:
        per_frame = [_mask(lab, _named(f, name)) for f, lab in zip(clip.frames, labels, strict=True)]
        first = np.concatenate([per_frame[0]] + [np.zeros_like(m) for m in per_frame[1:]])
        last = np.concatenate([np.zeros_like(m) for m in per_frame[:-1]] + [per_frame[-1]])
        looks = [(0, 0, np.concatenate(per_frame)), (0, 1, first), (0, 2, last)]
        q, a = world.motion_question(clip, name)
        probes = {}
        if motion_compare:
            end, start = (next(o for o in f.objects if o.name == name) for f in (clip.frames[-1], clip.frames[0]))
            # by pixels: a move of 18-24 px often stays within one cell
            probes["compare"] = np.array([_sign(end.cx - start.cx) + 1, _sign(end.cy - start.cy) + 1])
        out.append(Turn(q, a, looks, gather_targets("motion", q, a), probes))
    return Conversation(world.render_clip(clip), labels, out)


def sample_batch(rng: random.Random, clip: bool, images: int = 8, turns: int = 6, frames: int = 4,
                 objects: tuple[int, int] = (2, 7), weights: list[float] | None = None, blank_share: float = 0.0,
                 relation_words: bool = False, motion_compare: bool = False, count_look: bool = False,
                 count_high: float = 0.0):
    """Conversations for one step: `images` scenes, or clips holding about as many frames.

    `objects` bounds the shapes per scene (a curriculum narrows it early on), `weights` the question
    kinds; a `blank_share` of the scenes hold no shape at all (every answer "zero", "no" or "empty");
    `relation_words`, `motion_compare`, `count_look` and `count_high` as in `gather_targets`,
    `clip_conversation` and `image_conversation`."""
    if clip:
        return [clip_conversation(rng, frames, motion_compare) for _ in range(max(1, images // frames))]
    out = []
    for _ in range(images):
        blank = blank_share > 0 and rng.random() < blank_share  # draws nothing when off: the stream stays the same
        out.append(image_conversation(rng, turns, (0, 0) if blank else objects, weights, relation_words, count_look,
                                      count_high))
    return out


def _render(processor, messages, generation: bool) -> str:
    if not messages:
        return ""
    return processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def encode(processor, convs: list[Conversation], tokens_per_image: int = TOKENS, probes: list | None = None,
           spreads: list | None = None):
    """input_ids and labels (answers + </s>) right-padded, the turn of every label, looks and gathers.

    Each conversation is rendered turn by turn with the chat template, so its first prompt is exactly
    what inference sends. Looks are (row, query position, head, weight over the row's visual tokens);
    gathers are (row, query position, head, positions of the words to read). When `probes` is a list,
    (row, query position, probe name, target) entries are appended to it, and when `spreads` is, (row, query
    position, head, weight over the row's visual tokens) entries."""
    tok = processor.tokenizer
    image_token = processor.image_token
    seqs, targets, turn_of, looks, gathers = [], [], [], [], []
    turn_id = 0
    for row, conv in enumerate(convs):
        ids: list[int] = []
        lab: list[int] = []
        owner: list[int] = []
        messages: list[dict] = []
        for i, t in enumerate(conv.turns):
            before = _render(processor, messages, False)
            content = [{"type": "image"}] * (len(conv.images) if i == 0 else 0) + [{"type": "text", "text": t.question}]
            messages.append({"role": "user", "content": content})
            prompt = _render(processor, messages, True)[len(before):]
            p = tok(prompt.replace(image_token, image_token * tokens_per_image), add_special_tokens=False)["input_ids"]
            a = tok(t.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            start = len(ids) + len(p)
            q = tok(t.question, add_special_tokens=False)["input_ids"]
            q0 = start - 2 - len(q)  # the prompt ends "QUESTION assistant :"
            assert p[len(p) - 2 - len(q) : len(p) - 2] == q, "chat template changed: the question must end the prompt"
            ids += p + a
            lab += [-100] * len(p) + a
            owner += [-1] * len(p) + [turn_id] * len(a)
            looks += [(row, start - 1 + j, head, mask) for j, head, mask in t.looks]
            gathers += [(row, start - 1 + j, head, [(q0 if src == "question" else start) + i for i in idx])
                        for j, head, src, idx in t.gathers]
            if probes is not None:
                probes += [(row, start - 1, name, target) for name, target in t.probes.items()]
            if spreads is not None:
                spreads += [(row, start - 1 + j, head, mask) for j, head, mask in t.spreads]
            messages.append({"role": "assistant", "content": t.answer})
            turn_id += 1
        seqs.append(ids)
        targets.append(lab)
        turn_of.append(owner)
    width = max(len(s) for s in seqs)
    out = [torch.full((len(seqs), width), v) for v in (tok.pad_token_id, -100, -1)]
    for i, parts in enumerate(zip(seqs, targets, turn_of, strict=True)):
        for tensor, values in zip(out, parts, strict=True):
            tensor[i, : len(values)] = torch.tensor(values)
    return (*out, looks, gathers)


def head_attention(model, hidden_in: torch.Tensor, layer: int, rows, pos, heads) -> torch.Tensor:
    """Causal attention probabilities (Q, T) of decoder `layer`, one (row, query position, head) per query.

    Recomputed from the layer's input exactly as the stock layer does (norm, q/k projections, RoPE)."""
    lm = model.model.language_model
    block = lm.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(hidden_in)
    b, t, _ = x.shape
    hd = attn.head_dim
    cos, sin = lm.rotary_emb(x, torch.arange(t, device=x.device)[None].expand(b, t))
    n = torch.arange(len(rows), device=x.device)
    q = attn.q_proj(x[rows, pos]).view(len(rows), -1, hd)[n, heads]  # (Q, hd)
    k = attn.k_proj(x).view(b, t, -1, hd)[rows, :, heads]  # (Q, T, hd); as many key heads as query heads
    q = q * cos[rows, pos] + rotate_half(q) * sin[rows, pos]
    k = k * cos[rows] + rotate_half(k) * sin[rows]
    logits = torch.einsum("qd,qtd->qt", q, k) * attn.scaling
    future = torch.arange(t, device=x.device)[None] > pos[:, None]
    return logits.masked_fill(future, float("-inf")).float().softmax(-1)


def _where(entries, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, query positions and heads of supervised entries, each (row, position, head, ...)."""
    return tuple(torch.tensor([e[k] for e in entries], device=device) for k in range(3))


def attention_loss(model, hidden_in: torch.Tensor, layer: int, entries, target_of,
                   spread: bool = False) -> torch.Tensor:
    """-log of the attention mass each supervised (row, position, head) puts on its target, averaged; with
    `spread`, the cross-entropy from the target weights (normalised) to the attention instead, so that the
    mass is also shared out as the weights say.

    `target_of(i, entry, probs_row)` fills the target weights of entry i in place."""
    if not entries:
        return hidden_in.sum() * 0.0
    return attention_objective(*attention_and_target(model, hidden_in, layer, entries, target_of), spread)


def attention_and_target(model, hidden_in: torch.Tensor, layer: int, entries, target_of):
    """The attention (Q, T) of each supervised (row, position, head) and its target weights (`attention_loss`)."""
    rows, pos, heads = _where(entries, hidden_in.device)
    probs = head_attention(model, hidden_in, layer, rows, pos, heads)
    target = torch.zeros_like(probs)
    for i, e in enumerate(entries):
        target_of(i, e, target[i])
    return probs, target


def attention_objective(probs: torch.Tensor, target: torch.Tensor, spread: bool = False) -> torch.Tensor:
    """-log of the mass `probs` (Q, T) put on `target`'s weights, averaged over queries; with `spread`, the
    cross-entropy from the normalised target to `probs`: its least value is the target's entropy, reached only
    when the attention is the target."""
    if spread:
        target = target / target.sum(-1, keepdim=True)
        return -(target * probs.clamp(min=1e-9).log()).sum(-1).mean()
    return -(probs * target).sum(-1).clamp(min=1e-6).log().mean()


def sink_balance(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of the sink's log-odds, log(p/(1-p)) at token 0, against log(1/n) where the target
    weighs the sink 1 and n shapes 1 each (`count_looks`), averaged over queries with n >= 1.

    The answer reads the count from this balance, but the spread's cross-entropy hardly sees it: a sink
    holding 0.65 where 0.5 is due costs 0.05 nats. After six stages a counted shape drew from 0.54 (circles)
    to 1.09 (blue) of the sink's mass depending on the word asked, enough to read three as two."""
    n = target[:, 1:].sum(-1)
    some = n > 0.5
    if not some.any():
        return probs.sum() * 0.0
    sink = probs[some, 0].clamp(1e-6, 1 - 1e-6)
    return ((sink.log() - (1 - sink).log() + n[some].log()) ** 2).mean()


def look_attention(model, hidden_in: torch.Tensor, layer: int, ids: torch.Tensor, looks, image_id: int,
                   spread: bool = False):
    """The attention and target weights of `look_loss`; with `spread`, of the spread looks (`count_looks`):
    the weights over the patches and 1 on the row's first token, the sink."""
    visual = ids == image_id

    def fill(_, entry, row_target):
        row_target[visual[entry[0]].nonzero()[:, 0]] = torch.from_numpy(entry[3]).to(row_target.device)
        if spread:
            row_target[0] = 1.0

    return attention_and_target(model, hidden_in, layer, looks, fill)


def look_loss(model, hidden_in: torch.Tensor, layer: int, ids: torch.Tensor, looks, image_id: int) -> torch.Tensor:
    """Attention onto the patches a question is about (weights over the row's visual tokens)."""
    if not looks:
        return hidden_in.sum() * 0.0
    return attention_objective(*look_attention(model, hidden_in, layer, ids, looks, image_id))


class QueryHead(nn.Module):
    """Which naming words each supervised head gathered, read linearly from the look layer's input.

    Training-only. Attention losses alone shape where the first layer reads, not whether what it
    reads reaches the residual stream: without this probe the answering token's state barely changed
    with the question (cosine 0.999 between questions about different shapes), so the look layer
    could only learn to look at shapes in general."""

    def __init__(self, width: int, vocab: list[int], heads: int = 3) -> None:
        super().__init__()
        self.register_buffer("vocab", torch.tensor(vocab), persistent=False)
        self.heads = heads
        self.proj = nn.Linear(width, heads * len(vocab))

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, gathers) -> torch.Tensor:
        if not gathers:
            return hidden.sum() * 0.0
        rows, pos, heads = _where(gathers, hidden.device)
        picked = torch.arange(len(gathers), device=heads.device)
        logits = self.proj(hidden[rows, pos]).view(len(gathers), self.heads, -1)[picked, heads]
        target = torch.zeros_like(logits)
        for i, g in enumerate(gathers):
            target[i] = torch.isin(self.vocab, ids[g[0], g[3]]).float()
        return F.binary_cross_entropy_with_logits(logits, target)


class ReadoutHead(nn.Module):
    """What each supervised look head found, read linearly from the look layer's output. Training-only.

    With the look heads' mass on the right glyph at 1.00, a linear probe still read its digit from
    the answering token only ~20% of the time (58% from the glyph's own patch): attention alone
    does not train the value path. The target of a look is the distribution of the patch labels
    under its target weights (soft cross-entropy per label kind), so a look at two shapes asks for
    both colours, and row and column place what was found."""

    KINDS = ("colour", "shape", "size", "digit", "row", "col")

    def __init__(self, width: int, heads: int = 3) -> None:
        super().__init__()
        self.sizes = [world.LABEL_HEADS[k] for k in self.KINDS]
        self.heads = heads
        self.proj = nn.Linear(width, heads * sum(self.sizes))

    def forward(self, hidden: torch.Tensor, looks, labels_of_row: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        if not looks:
            return hidden.sum() * 0.0
        dev = hidden.device
        rows, pos, heads = _where(looks, dev)
        picked = torch.arange(len(looks), device=dev)
        logits = self.proj(hidden[rows, pos]).view(len(looks), self.heads, -1)[picked, heads]
        weights = torch.stack([torch.from_numpy(e[3]) for e in looks]).to(dev)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)
        total = hidden.new_zeros(())
        for kind, part in zip(self.KINDS, logits.split(self.sizes, dim=-1), strict=True):
            onehot = torch.stack([F.one_hot(labels_of_row[e[0]][kind], part.shape[-1]).float() for e in looks])
            target = torch.einsum("qt,qtc->qc", weights, onehot)
            total = total - (target * part.log_softmax(-1)).sum(-1).mean()
        return total / len(self.KINDS)


class _AnswerProbe(nn.Module):
    """A linear probe over the answering token's hidden state: `groups` classifications of `classes` each."""

    def __init__(self, width: int, groups: int, classes: int) -> None:
        super().__init__()
        self.groups, self.classes = groups, classes
        self.proj = nn.Linear(width, groups * classes)

    def forward(self, hidden: torch.Tensor, entries) -> torch.Tensor:
        """Cross-entropy over entries (row, position, name, target of `groups` class indices)."""
        if not entries:
            return hidden.sum() * 0.0
        rows = torch.tensor([e[0] for e in entries], device=hidden.device)
        pos = torch.tensor([e[1] for e in entries], device=hidden.device)
        target = torch.from_numpy(np.stack([e[3] for e in entries]).astype(np.int64)).to(hidden.device)
        logits = self.proj(hidden[rows, pos]).view(len(entries) * self.groups, self.classes)
        return F.cross_entropy(logits.float(), target.flatten())


class RelationHead(_AnswerProbe):
    """Where the first shape of a relation question is from the second: column order and row order (3 classes
    each, `probe_targets`), read linearly at the answering token. Training-only.

    The look heads bring both shapes to that token and the readout probe checks that their rows and columns
    arrive, yet relation answers stayed at chance (0.50). The answer is an exclusive-or of the two places'
    order and the relation word, and neither alone says anything about it, so the answer loss taught
    neither: the first model answered "left of" and "right of" alike in 59 of 60 pairs. This probe asks for
    the order a layer before the answer; `--relation-words` brings the word (both are needed). With
    `--motion-compare` it also asks where a moving shape ends from where it starts."""

    def __init__(self, width: int) -> None:
        super().__init__(width, 2, 3)


class TallyHead(_AnswerProbe):
    """How many shapes of each colour and of each shape the scene holds (0-8 each), read linearly at the
    answering token of count questions. Training-only.

    Counting stayed at 0.67 with the look heads on the right shapes: an attention average says what the
    shapes are like, not how many there are. The tallies ask the decoder to keep counts, per colour and per
    shape, which the answer then selects from."""

    def __init__(self, width: int) -> None:
        super().__init__(width, len(world.COLOUR_NAMES) + len(world.SHAPES), len(world.NUMBERS))


class CountHead(_AnswerProbe):
    """How many shapes a count question counts (0-8), read linearly from the look layer's output at the
    answering token, where `count_looks` put the sink's share 1/(n+1). Training-only: the spread look alone
    shapes where the head looks, not whether its value path carries the share."""

    def __init__(self, width: int) -> None:
        super().__init__(width, 1, len(world.NUMBERS))


# probe name -> (target name in `probe_targets`, class); "count" reads the look layer's output, the others
# the hidden state `--probe-layer`
PROBES = {"relation": ("compare", RelationHead), "tally": ("tally", TallyHead), "count": ("count", CountHead)}


def gather_loss(model, hidden_in: torch.Tensor, gathers) -> torch.Tensor:
    """Attention of the first decoder layer onto the words that name what is asked about."""

    def fill(_, entry, row_target):
        row_target[entry[3]] = 1.0

    return attention_loss(model, hidden_in, 0, gathers, fill)


def losses(model, probes: nn.ModuleDict, processor, convs: list[Conversation], device, look_layer: int,
           probe_layer: int, balance: bool = False) -> dict[str, torch.Tensor]:
    """Every loss of one step, by name: "lm" (answers), "patch", "look", "query", "readout", one per optional
    probe in `probes` ("relation", "tally" at hidden state `probe_layer`, "count" at the look layer's output)
    and, with the count probe, "spread" (the spread looks' `attention_objective` with `spread`) and, with
    `balance`, "balance" (`sink_balance` of the same looks)."""
    pics = [im for c in convs for im in c.images]
    pixels = processor.image_processor(pics, return_tensors="pt")["pixel_values"].to(device)
    out = model.model.get_image_features(
        pixel_values=pixels, vision_feature_layer=-1, vision_feature_select_strategy="default", output_hidden_states=True
    )
    lab = {k: torch.stack([torch.from_numpy(x[k]) for c in convs for x in c.labels]).to(device)
           for k in world.LABEL_HEADS}
    result = {"patch": probes["patch"](out.hidden_states[-1][:, 1:], lab)}
    feats = torch.cat(list(out.pooler_output))

    extra: list = []
    spreads: list = []
    ids, targets, turn_of, looks, gathers = encode(processor, convs, TOKENS, probes=extra, spreads=spreads)
    ids, targets, turn_of = ids.to(device), targets.to(device), turn_of.to(device)
    image_id = model.config.image_token_id
    embeds = model.get_input_embeddings()(ids)
    embeds = embeds.masked_scatter((ids == image_id).unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))
    # Rows are right-padded and attention is causal, so no real token sees a pad: without a padding mask SDPA
    # takes its causal path, which skips the masked blocks (same numbers, faster).
    hidden = model.model.language_model(inputs_embeds=embeds, output_hidden_states=True)
    look = look_loss(model, hidden.hidden_states[look_layer], look_layer, ids, looks, image_id)
    result["look"] = look + gather_loss(model, hidden.hidden_states[0], gathers)
    if "count" in probes:
        if spreads:
            probs, target = look_attention(model, hidden.hidden_states[look_layer], look_layer, ids, spreads,
                                           image_id, spread=True)
            result["spread"] = attention_objective(probs, target, spread=True)
            if balance:
                result["balance"] = sink_balance(probs, target)
        else:
            result["spread"] = hidden.hidden_states[look_layer].sum() * 0.0
            if balance:
                result["balance"] = result["spread"]
    result["query"] = probes["query"](hidden.hidden_states[look_layer], ids, gathers)
    # Per conversation row, the patch labels of its visual tokens in sequence order (its images in turn).
    per_row, start = [], 0
    for c in convs:
        n = len(c.images)
        per_row.append({k: lab[k][start : start + n].flatten() for k in ReadoutHead.KINDS})
        start += n
    result["readout"] = probes["readout"](hidden.hidden_states[look_layer + 1], looks, per_row)
    for name, (target, _) in PROBES.items():
        if name in probes:
            layer = look_layer + 1 if name == "count" else probe_layer
            result[name] = probes[name](hidden.hidden_states[layer], [e for e in extra if e[2] == target])
    # Only answer positions need logits: predict token t+1 from position t; average per answer, then over answers.
    tgt, owner = targets[:, 1:], turn_of[:, 1:]
    where = tgt != -100
    per_tok = F.cross_entropy(model.lm_head(hidden.last_hidden_state[:, :-1][where]).float(), tgt[where],
                              reduction="none")
    turns = int(turn_of.max()) + 1
    sums = torch.zeros(turns, device=device).index_add_(0, owner[where], per_tok)
    counts = torch.zeros(turns, device=device).index_add_(0, owner[where], torch.ones_like(per_tok))
    result["lm"] = (sums / counts.clamp(min=1)).mean()
    return result


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def quick_eval(model, processor, seed: int, n: int) -> dict[str, float]:
    from restore.engine import Engine
    from restore.zoo.evaluate import evaluate

    model.eval()
    result = evaluate(Engine(model, processor), world.benchmark(seed, n))
    model.train()
    return result


# Arguments that change how a run is carried out but not what it computes: a resumed run may change them.
RUN_ARGS = {"out", "device", "threads", "eval_every", "eval_n", "eval_seed", "card_n", "checkpoint_dir",
            "checkpoint_every", "resume", "stop_after"}
LOSS_WEIGHTS = {"patch": "aux_weight", "look": "look_weight", "query": "query_weight", "readout": "readout_weight",
                "relation": "relation_weight", "tally": "tally_weight", "count": "count_weight", "spread": "count_weight",
                "balance": "count_balance"}


def recipe(args) -> dict:
    """The arguments that decide the weights (with the seed): what a checkpoint must agree with to resume."""
    return {k: v for k, v in vars(args).items() if k not in RUN_ARGS}


def kind_weights(spec: str) -> list[float] | None:
    """'count=2,relation=2' -> sampling weights over `IMAGE_KINDS` (1 for a kind not named); '' -> None."""
    if not spec:
        return None
    weights = dict.fromkeys(IMAGE_KINDS, 1.0)
    for part in spec.split(","):
        kind, sep, value = part.partition("=")
        if not sep or kind.strip() not in weights:
            raise ValueError(f"--kind-weights: {part!r} is not KIND=WEIGHT with KIND in {', '.join(IMAGE_KINDS)}")
        weights[kind.strip()] = float(value)
    if min(weights.values()) < 0 or not sum(weights.values()) > 0:
        raise ValueError(f"--kind-weights: weights must be >= 0 and not all 0, got {spec!r}")
    return list(weights.values())


def shape_overrides(spec: str) -> dict[str, float]:
    """'text_width=256,text_depth=6' -> overrides of `architecture.SHAPE` (a larger or smaller model)."""
    out: dict[str, float] = {}
    for part in filter(None, spec.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in architecture.SHAPE:
            raise ValueError(f"--shape: {part!r} is not KEY=VALUE with KEY in {', '.join(architecture.SHAPE)}")
        out[key.strip()] = float(value) if key.strip() == "rope_theta" else int(value)
    return out


def scene_objects(step: int, curriculum: int) -> tuple[int, int]:
    """Shapes per training scene: 2-3 at first, widening to the world's 2-7 over `curriculum` steps (0: at once)."""
    if not curriculum or step >= curriculum:
        return (2, 7)
    return (2, 3 + (4 * step) // curriculum)


class _LogBar:
    """A progress bar for when tqdm is not installed: one log line every `every` seconds."""

    def __init__(self, total: int, initial: int, every: float = 30.0) -> None:
        self.total, self.n, self.every = total, initial, every
        self.start, self.last, self.first = time.time(), 0.0, initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.every or self.n == self.total:
            self.last = now
            rate = (self.n - self.first) / max(now - self.start, 1e-9)
            eta = (self.total - self.n) / rate if rate else float("inf")
            logger.info("train %d/%d (%.2f steps/s, %.0f min left) %s", self.n, self.total, rate, eta / 60, self.postfix)

    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return _LogBar(total, initial)
    return tqdm(total=total, initial=initial, desc="train", mininterval=5)


def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / "latest.pt"


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write `state` to DIR/latest.pt atomically: a complete file or the previous one, never half of one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _rng_state(rng: random.Random, device: torch.device) -> dict:
    state = {"python": rng.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(rng: random.Random, state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    rng.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class StepBoundaryInterrupt:
    """While active, a first Ctrl-C only asks training to stop after the step in progress (which is then
    checkpointed, so a resume continues to the weights of an uninterrupted run); a second one stops at once.
    Inactive without a checkpoint to write, or off the main thread (where signal handlers cannot be set)."""

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.info("interrupted: stopping after this step to checkpoint it (Ctrl-C again to stop at once)")

    def __enter__(self) -> StepBoundaryInterrupt:
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)


def train(args) -> Path | None:
    """Train, resuming from `--checkpoint-dir` with `--resume`; the model folder, or None after `--stop-after`.

    With a checkpoint directory, Ctrl-C checkpoints the step in progress and raises KeyboardInterrupt."""
    with StepBoundaryInterrupt(active=bool(args.checkpoint_dir)) as interrupt:
        return _train(args, interrupt)


def _train(args, interrupt: StepBoundaryInterrupt) -> Path | None:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, processor = architecture.build(args.seed, shape_overrides(args.shape))
    init_record = None
    if args.init:  # a later stage: the weights of an earlier run, the probes fresh
        from transformers import LlavaForConditionalGeneration

        model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32).state_dict())
        record = Path(args.init) / "training.json"
        init_record = json.loads(record.read_text()) if record.exists() else {}
        earlier = init_record.pop("log", [])
        init_record.update(steps=len(earlier), seconds=earlier[-1]["seconds"] if earlier else None)
    model.to(device).train()
    size = sum(p.numel() for p in model.parameters()) * 4
    logger.info("model: %.2f M parameters, %.1f MiB in float32", size / 4e6, size / 2**20)
    if size > 50 * 2**20:
        logger.warning("the model is over the 50 MiB the shipped default model may weigh")
    text = model.config.text_config.hidden_size
    naming = sorted(DESCRIPTIVE | set(" ".join(world.PLACES).split()) | set(RELATION_WORDS if args.relation_words else ()))
    probes = nn.ModuleDict({
        "patch": PatchHeads(model.config.vision_config.hidden_size),
        "query": QueryHead(text, processor.tokenizer.convert_tokens_to_ids(naming), heads=4 if args.relation_words else 3),
        "readout": ReadoutHead(text),
    })
    for name, (_, cls) in PROBES.items():
        if getattr(args, LOSS_WEIGHTS[name]) > 0 and (name != "count" or args.count_look):
            probes[name] = cls(text)
    probes.to(device)
    params = [p for m in (model, probes) for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    weights = kind_weights(args.kind_weights)
    rng = random.Random(f"restore-train:{args.seed}")
    out = Path(args.out)
    log: list[dict] = []
    ema: dict[str, float] = {}
    start, elapsed = 0, 0.0
    ckpt = checkpoint_path(args.checkpoint_dir) if args.checkpoint_dir else None
    if args.resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        # an option added since the checkpoint was written was off in its run
        now = recipe(args)
        saved = {**{k: v for k, v in now.items() if not v}, **state["recipe"]}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"{ckpt} was written by a different recipe ({', '.join(diff)} differ); "
                             "resume with the same arguments or start a new --checkpoint-dir")
        model.load_state_dict(state["model"])
        probes.load_state_dict(state["probes"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(rng, state["rng"], device)
        start, elapsed, log, ema = state["step"], state["seconds"], state["log"], state["ema"]
        logger.info("resumed from %s at step %d", ckpt, start)
    elif args.resume:
        logger.info("no checkpoint at %s: starting at step 0", ckpt)

    def checkpoint(step: int) -> None:
        if ckpt is None:
            return
        save_checkpoint(ckpt.parent, {
            "step": step, "seconds": elapsed + time.time() - t0, "recipe": recipe(args), "model": model.state_dict(),
            "probes": probes.state_dict(), "optimizer": opt.state_dict(),
            # the learning rate is a pure function of the step (lr_at): no scheduler state beyond it
            "schedule": {"lr": lr_at(step, args.steps, args.lr, args.warmup)},
            "rng": _rng_state(rng, device), "log": log, "ema": ema,
        })

    stop = min(args.steps, args.stop_after or args.steps)
    bar = progress_bar(args.steps, start)
    t0 = time.time()
    for step in range(start, stop):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        clip = rng.random() < args.clip_share
        batch = sample_batch(rng, clip, images=args.images, turns=args.turns, frames=args.frames,
                             objects=scene_objects(step, args.curriculum), weights=weights,
                             blank_share=args.blank_share, relation_words=args.relation_words,
                             motion_compare=args.motion_compare, count_look=args.count_look,
                             count_high=args.count_high)
        parts = losses(model, probes, processor, batch, device, args.look_layer, args.probe_layer,
                       balance=args.count_balance > 0)
        loss = parts["lm"] + sum(getattr(args, LOSS_WEIGHTS[k]) * v for k, v in parts.items() if k != "lm")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        entry = {"step": step + 1, **{k: round(v.item(), 4) for k, v in parts.items()}, "clip": clip,
                 "seconds": round(elapsed + time.time() - t0, 1)}
        for k in parts:
            ema[k] = entry[k] if k not in ema else 0.98 * ema[k] + 0.02 * entry[k]
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()}, refresh=False)
        bar.update(1)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            entry["eval"] = quick_eval(model, processor, args.eval_seed, args.eval_n)
            logger.info("step %d: %s", step + 1, json.dumps(entry["eval"]))
            save(model, processor, out, args, log + [entry], init_record)
        log.append(entry)
        if interrupt.requested:
            bar.close()
            checkpoint(step + 1)
            logger.info("interrupted: checkpointed after step %d of %d; rerun with --resume to continue",
                        step + 1, args.steps)
            raise KeyboardInterrupt
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < stop:
            checkpoint(step + 1)
    bar.close()
    if stop < args.steps:
        checkpoint(stop)
        logger.info("stopped after step %d of %d; rerun with --resume to continue", stop, args.steps)
        return None
    save(model, processor, out, args, log, init_record)
    checkpoint(stop)
    if args.card_n:
        from restore.zoo.card import write_card

        write_card(out, n=args.card_n, device=args.device)
    return out


def save(model, processor, out: Path, args, log, init: dict | None = None) -> None:
    """The model folder; `training.json` holds this run's arguments and log and, after `--init`, the
    arguments, step count and seconds of the run(s) it continued (their logs stay with them)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    record = {"args": vars(args), "log": log}
    if init is not None:
        record["init"] = init
    (out / "training.json").write_text(json.dumps(record, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m restore.zoo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="where to write the model folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--images", type=int, default=8, help="scenes per image step (clip steps hold as many frames)")
    p.add_argument("--turns", type=int, default=6, help="questions per scene, asked as one conversation")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-patch loss on the tower")
    p.add_argument("--look-layer", type=int, default=1, help="decoder layer whose heads 0-2 the look losses train")
    p.add_argument("--look-weight", type=float, default=0.5, help="weight of the attention (look) losses")
    p.add_argument("--query-weight", type=float, default=1.0,
                   help="weight of the probe that reads the gathered naming words at the look layer")
    p.add_argument("--readout-weight", type=float, default=1.0,
                   help="weight of the probe that names what the look heads found, at the look layer's output")
    p.add_argument("--relation-weight", type=float, default=0.0,
                   help="weight of the probe that compares the two places of a relation question (0: off)")
    p.add_argument("--tally-weight", type=float, default=0.0,
                   help="weight of the probe that counts the shapes of each colour and shape at count questions (0: off)")
    p.add_argument("--probe-layer", type=int, default=None,
                   help="hidden state (0: embeddings, i: after decoder layer i) the relation and tally probes read "
                        "(default: two after the look layer's input)")
    p.add_argument("--kind-weights", default="",
                   help="sampling weights of image question kinds, e.g. 'count=2,relation=2' (others 1; '': uniform)")
    p.add_argument("--curriculum", type=int, default=0,
                   help="steps over which scenes widen from 2-3 shapes to the world's 2-7 (0: all sizes at once)")
    p.add_argument("--blank-share", type=float, default=0.0,
                   help="share of training scenes without any shape (answers 'zero', 'no', 'empty')")
    p.add_argument("--shape", default="",
                   help="architecture overrides, e.g. 'text_width=256,text_depth=6' (keys of architecture.SHAPE)")
    p.add_argument("--relation-words", action="store_true",
                   help="head 3 of the first decoder layer gathers a relation question's relation word, and the query "
                        "probe asks for it at the look layer")
    p.add_argument("--motion-compare", action="store_true",
                   help="the compare probe (--relation-weight) also asks where a moving shape ends from where it starts")
    p.add_argument("--count-look", action="store_true",
                   help="at count questions head 3 of the look layer spreads over the counted shapes (equal shares) "
                        "and the first token, and a probe on its output states the count (weight --count-weight)")
    p.add_argument("--count-weight", type=float, default=1.0,
                   help="weight of the spread look and the count probe of --count-look")
    p.add_argument("--count-balance", type=float, default=0.0,
                   help="weight of a loss on the sink's log-odds in the spread look of --count-look, which must be "
                        "log(1/n) for n counted shapes (0: off)")
    p.add_argument("--count-high", type=float, default=0.0,
                   help="share of count questions that ask about the scene's most frequent colour or shape "
                        "(answers of three and more, rare among the world's own questions)")
    p.add_argument("--init", default="",
                   help="start from this model folder's weights (a later stage of training; probes start fresh)")
    p.add_argument("--clip-share", type=float, default=0.2, help="share of steps that train on clips")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--eval-every", type=int, default=300, help="steps between quick held-out evaluations (0: none)")
    p.add_argument("--eval-n", type=int, default=8, help="questions per type in each quick evaluation")
    p.add_argument("--eval-seed", type=int, default=10_000, help="held-out world seed of the quick evaluations")
    p.add_argument("--card-n", type=int, default=100, help="questions per type for the model card's evaluation (0: none)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where to keep latest.pt (model, probes, optimizer, step, RNG states); none when not given")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint-dir/latest.pt when it exists (same recipe arguments required)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after this step, checkpointed, to continue later with --resume (0: run to --steps)")
    args = p.parse_args(argv)
    shape = architecture.SHAPE
    try:
        shape = {**architecture.SHAPE, **shape_overrides(args.shape)}
        kind_weights(args.kind_weights)
    except ValueError as err:
        p.error(str(err))
    depth = int(shape["text_depth"])
    if not 1 <= args.look_layer < depth:
        p.error(f"--look-layer must be in 1..{depth - 1} (layer 0 gathers the question words)")
    if args.probe_layer is None:
        args.probe_layer = min(args.look_layer + 2, depth)
    if not 1 <= args.probe_layer <= depth:
        p.error(f"--probe-layer must be in 1..{depth} (a hidden state after a decoder layer)")
    if args.motion_compare and not args.relation_weight > 0:
        p.error("--motion-compare trains the compare probe: give it a --relation-weight above 0")
    if args.relation_words and shape["text_heads"] < 4:
        p.error("--relation-words needs a fourth head in the first decoder layer (text_heads >= 4)")
    if args.count_look and shape["text_heads"] <= COUNT_HEAD:
        p.error(f"--count-look needs head {COUNT_HEAD} in the look layer (text_heads >= {COUNT_HEAD + 1})")
    if args.count_balance and not args.count_look:
        p.error("--count-balance weighs a loss on the spread look of --count-look: give --count-look too")
    if not 0 <= args.count_high <= 1:
        p.error(f"--count-high must be in 0..1, got {args.count_high}")
    if args.init and not (Path(args.init) / "config.json").is_file():
        p.error(f"--init {args.init}: not a model folder (no config.json)")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        out = train(args)
    except KeyboardInterrupt:
        if not args.checkpoint_dir:
            logger.info("interrupted; nothing saved (--checkpoint-dir keeps the work of an interrupted run)")
        return 130
    if out is not None:
        logger.info("saved %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
