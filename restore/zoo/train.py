"""`python -m restore.zoo.train`: train the default model from a seed on the synthetic world.

Each step is either an image batch (4 scenes × 4 questions of mixed types and
captions) or a clip batch (2 clips × 2 motion questions). The vision tower
runs once per image and its features are shared by that image's question
rows. Losses:
- next-token cross-entropy on the answer tokens (mean per row, so a long
  caption weighs as much as a yes/no);
- a dense per-patch loss on the tower's output (colour, shape, size, digit,
  object centre of every patch), which teaches the tower what is where within
  a few hundred steps;
- a grounding loss in the middle of the decoder: at every visual token, is
  this patch part of what the question is about (`world.referents`)?
- look losses on head 0 of two layers: in the first layer every visual token
  reads the question before it; in the grounding layer the last prompt token
  (where the first answer token is predicted) looks at the referred patches.
Binding question words to image regions is the slow part of learning from
answers alone (answer loss stalls at the answer priors for hundreds of steps);
the last two supervise it directly. The extra heads are training-only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import architecture, world

logger = logging.getLogger(__name__)

IMAGE_KINDS = world.IMAGE_TYPES + ["caption"]


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


def _rows_for_scene(scene: world.Scene, rng: random.Random, per_image: int) -> list[tuple[str, str, str]]:
    rows = []
    while len(rows) < per_image:
        kind = rng.choice(IMAGE_KINDS)
        qa = world.ask(scene, kind, rng)
        if qa is not None:
            rows.append((*qa, kind))
    return rows


def _grounding(scene: world.Scene, question: str, item: np.ndarray) -> np.ndarray:
    """1 where a patch belongs to what the question is about, per patch (576,)."""
    targets = np.array(sorted(world.referents(scene, question)), dtype=np.int64) + 1
    return np.isin(item.reshape(-1), targets).astype(np.float32)


def sample_batch(rng: random.Random, clip: bool, images: int = 4, per_image: int = 4, frames: int = 4):
    """(images, per-image patch labels, rows of (question, answer, image indices, grounding or None))."""
    pics, labels, rows = [], [], []
    if clip:
        for _ in range(images // 2):
            c = world.random_clip(rng, frames)
            first = len(pics)
            pics += world.render_clip(c)
            frame_labels = [world.patch_labels(f) for f in c.frames]
            labels += frame_labels
            for _ in range(per_image // 2):
                q, a = world.ask_motion(c, rng)
                ground = np.concatenate([_grounding(f, q, lab["item"]) for f, lab in zip(c.frames, frame_labels)])
                rows.append((q, a, list(range(first, first + frames)), ground))
        return pics, labels, rows
    for _ in range(images):
        scene = world.random_scene(rng)
        pics.append(world.render(scene))
        labels.append(world.patch_labels(scene))
        for q, a, kind in _rows_for_scene(scene, rng, per_image):
            ground = None if kind == "caption" else _grounding(scene, q, labels[-1]["item"])
            rows.append((q, a, [len(pics) - 1], ground))
    return pics, labels, rows


def encode_rows(processor, rows, tokens_per_image: int):
    """input_ids and labels (answer + </s> only), right-padded."""
    tok = processor.tokenizer
    image_token = processor.image_token
    seqs, targets = [], []
    for q, a, imgs, *_ in rows:
        prompt = architecture.chat_prompt(processor, q, len(imgs)).replace(image_token, image_token * tokens_per_image)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + t)
        targets.append([-100] * len(p) + t)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, t) in enumerate(zip(seqs, targets, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(t)] = torch.tensor(t)
    return ids, lab


class GroundHead(nn.Module):
    """Is this visual token part of what the question asks about? Read from a middle decoder layer."""

    def __init__(self, width: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.proj = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, image_id: int, rows) -> torch.Tensor:
        visual = ids == image_id
        keep = torch.tensor([r[3] is not None for r in rows], device=ids.device)
        if not bool(keep.any()):
            return hidden.sum() * 0.0
        target = torch.cat([torch.from_numpy(r[3]) for r in rows if r[3] is not None]).to(hidden.device)
        logits = self.proj(hidden[visual & keep[:, None]]).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(4.0, device=hidden.device))


def head0_attention(model, hidden_in: torch.Tensor, layer: int, query: torch.Tensor) -> torch.Tensor:
    """Causal attention probabilities of head 0 of decoder `layer` for query positions `query` (B, Q) → (B, Q, T).

    Recomputed from the layer's input exactly as the stock layer does (norm, q/k projections, RoPE)."""
    lm = model.model.language_model
    block = lm.layers[layer]
    attn = block.self_attn
    x = block.input_layernorm(hidden_in)
    b, t, _ = x.shape
    hd = attn.head_dim
    cos, sin = lm.rotary_emb(x, torch.arange(t, device=x.device)[None].expand(b, t))
    rows = torch.arange(b, device=x.device)[:, None]
    q = attn.q_proj(x[rows, query]).view(b, query.shape[1], -1, hd)[:, :, 0]  # (B, Q, hd)
    k = attn.k_proj(x).view(b, t, -1, hd)[:, :, 0]  # head 0's key head: (B, T, hd)
    q = q * cos[rows, query] + _rotate_half(q) * sin[rows, query]
    k = k * cos + _rotate_half(k) * sin
    logits = torch.einsum("bqd,btd->bqt", q, k) * attn.scaling
    future = torch.arange(t, device=x.device)[None, None] > query[:, :, None]
    return logits.masked_fill(future, float("-inf")).float().softmax(-1)


def look_loss(model, hidden_in: torch.Tensor, layer: int, ids: torch.Tensor, query: torch.Tensor, rows, image_id: int):
    """-log of the attention mass head 0 of `layer` puts, from each row's `query` position, on its referents."""
    keep = [i for i, r in enumerate(rows) if r[3] is not None and r[3].any()]
    if not keep:
        return hidden_in.sum() * 0.0
    idx = torch.tensor(keep, device=ids.device)
    probs = head0_attention(model, hidden_in[idx], layer, query[idx][:, None])[:, 0]
    target = torch.zeros_like(probs)
    sub = ids[idx]
    for j, i in enumerate(keep):
        target[j, (sub[j] == image_id).nonzero()[:, 0]] = torch.from_numpy(rows[i][3]).to(probs.device)
    return -(probs * target).sum(-1).clamp(min=1e-6).log().mean()


def read_loss(model, embeds: torch.Tensor, ids: torch.Tensor, image_id: int, sample: int = 48) -> torch.Tensor:
    """-log of the attention mass head 0 of the first layer puts, from visual tokens, on the question before them.

    Every visual token has to read the question before it can tell whether it is what the question asks
    about; this makes that route exist from the first steps instead of waiting for it to emerge."""
    visual = ids == image_id
    first = visual.int().argmax(1)  # the question is the text before the first image
    gen = torch.Generator().manual_seed(int(ids.sum()))
    query = torch.stack([
        torch.nonzero(visual[i])[:, 0][torch.randint(int(visual[i].sum()), (sample,), generator=gen)]
        for i in range(ids.shape[0])
    ])
    probs = head0_attention(model, embeds, 0, query)
    text = torch.arange(ids.shape[1], device=ids.device)[None] < first[:, None]
    return -(probs * text[:, None].float()).sum(-1).clamp(min=1e-6).log().mean()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def losses(model, heads: PatchHeads, ground: GroundHead, processor, batch, device):
    pics, labels, rows = batch
    pixels = processor.image_processor(pics, return_tensors="pt")["pixel_values"].to(device)
    out = model.model.get_image_features(
        pixel_values=pixels, vision_feature_layer=-1, vision_feature_select_strategy="default", output_hidden_states=True
    )
    patch = out.hidden_states[-1][:, 1:]
    proj = torch.stack(list(out.pooler_output))
    lab = {k: torch.stack([torch.from_numpy(x[k]) for x in labels]).to(device) for k in world.LABEL_HEADS}
    aux = heads(patch, lab)

    ids, targets = encode_rows(processor, rows, proj.shape[1])
    ids, targets = ids.to(device), targets.to(device)
    embeds = model.get_input_embeddings()(ids)
    feats = torch.cat([proj[j] for _, _, imgs, _ in rows for j in imgs])
    mask = (ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask.expand_as(embeds), feats.to(embeds.dtype))
    out = model.model.language_model(
        inputs_embeds=embeds, attention_mask=(ids != 0).long(), output_hidden_states=True
    )
    hidden = out.last_hidden_state
    grounding = ground(out.hidden_states[ground.layer], ids, model.config.image_token_id, rows)
    prompt_end = (targets != -100).int().argmax(1) - 1  # the last prompt token predicts the first answer token
    look = look_loss(model, out.hidden_states[ground.layer], ground.layer, ids, prompt_end, rows,
                     model.config.image_token_id)
    read = read_loss(model, out.hidden_states[0], ids, model.config.image_token_id)
    # Only answer positions need logits: predict token t+1 from position t.
    tgt = targets[:, 1:]
    where = tgt != -100
    logits = model.lm_head(hidden[:, :-1][where])
    per_tok = F.cross_entropy(logits.float(), tgt[where], reduction="none")
    row = where.nonzero()[:, 0]
    per_row = torch.zeros(ids.shape[0], device=device).index_add_(0, row, per_tok) / where.sum(1).clamp(min=1)
    return per_row.mean(), aux, grounding, look + read


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


def train(args) -> Path:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, processor = architecture.build(args.seed)
    model.to(device).train()
    heads = PatchHeads(model.config.vision_config.hidden_size).to(device)
    ground = GroundHead(model.config.text_config.hidden_size, args.ground_layer).to(device)
    params = list(model.parameters()) + list(heads.parameters()) + list(ground.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    rng = random.Random(f"restore-train:{args.seed}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    bar = tqdm(range(args.steps), desc="train", mininterval=5)
    t0 = time.time()
    ema: dict[str, float] = {}
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        clip = rng.random() < args.clip_share
        lm, aux, grounding, look = losses(model, heads, ground, processor, sample_batch(rng, clip, frames=args.frames),
                                          device)
        loss = lm + args.aux_weight * aux + args.ground_weight * grounding + args.look_weight * look
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        entry = {"step": step + 1, "lm": round(lm.item(), 4), "patch": round(aux.item(), 4),
                 "ground": round(grounding.item(), 4), "look": round(look.item(), 4), "clip": clip,
                 "seconds": round(time.time() - t0, 1)}
        for k in ("lm", "patch", "ground", "look"):
            ema[k] = entry[k] if k not in ema else 0.98 * ema[k] + 0.02 * entry[k]
        bar.set_postfix({k: f"{v:.3f}" for k, v in ema.items()})
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            entry["eval"] = quick_eval(model, processor, args.eval_seed, args.eval_n)
            logger.info("step %d: %s", step + 1, json.dumps(entry["eval"]))
            save(model, processor, out, args, log + [entry])
        log.append(entry)
    save(model, processor, out, args, log)
    if args.card_n:
        from restore.zoo.card import write_card

        write_card(out, n=args.card_n)
    return out


def save(model, processor, out: Path, args, log) -> None:
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"args": vars(args), "log": log}, indent=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m restore.zoo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_MODEL_DIR), help="where to write the model folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the per-patch loss on the tower")
    p.add_argument("--ground-weight", type=float, default=1.0, help="weight of the grounding loss in the decoder")
    p.add_argument("--ground-layer", type=int, default=2,
                   help="decoder layer whose input the grounding head reads and whose head 0 the look loss trains")
    p.add_argument("--look-weight", type=float, default=0.5, help="weight of the attention (look) losses")
    p.add_argument("--clip-share", type=float, default=0.2, help="share of steps that train on clips")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--eval-every", type=int, default=300, help="steps between quick held-out evaluations (0: none)")
    p.add_argument("--eval-n", type=int, default=8, help="questions per type in each quick evaluation")
    p.add_argument("--eval-seed", type=int, default=10_000, help="held-out world seed of the quick evaluations")
    p.add_argument("--card-n", type=int, default=100, help="questions per type for the model card's evaluation (0: none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = train(args)
    logger.info("saved %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
