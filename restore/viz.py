"""Token maps: which visual tokens a reduction keeps, merges and drops, drawn on the image.

`token_map` draws one span's `Assignment` over its image (or, for a clip, over a
horizontal strip of its frames): every slot's representative (the token the LLM
sees in its place) is outlined, the members of a merged slot are tinted with one
colour per slot (the anchor's colour), the slot's size is written on its anchor,
and dropped tokens are dimmed. `render_token_map` runs a model's vision tower
and a reduction plan to get that Assignment for one image (LLaVA family).
Pillow only.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from restore.prompts import DEFAULT_CAPTION_PROMPTS
from restore.request import ImageLike, load_image
from restore.tokens import Assignment

_BACKGROUND = (24, 24, 24)
_GAP = 4  # px between frames of a clip


def group_colour(slot: int) -> tuple[int, int, int]:
    """A bright colour per slot; consecutive slots are far apart in hue (golden-ratio steps)."""
    hue = (slot * 0.618033988749895) % 1.0
    sat = 0.85 if slot % 2 == 0 else 0.6
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _as_assignment(assignment_or_kept, num_tokens: int) -> Assignment:
    if isinstance(assignment_or_kept, Assignment):
        a = assignment_or_kept
    else:  # kept indices of a plain pruning
        kept = assignment_or_kept if torch.is_tensor(assignment_or_kept) else list(assignment_or_kept)
        a = Assignment.keep(torch.as_tensor(kept, dtype=torch.long), num_tokens)
    if a.num_tokens != num_tokens:
        raise ValueError(f"token_map: the assignment covers {a.num_tokens} tokens but the grid has {num_tokens}")
    return a


def _frames(image_or_frames, t: int) -> list[Image.Image]:
    if isinstance(image_or_frames, Sequence) and not isinstance(image_or_frames, str | bytes):
        frames = [load_image(f, f"token_map frame {i}") for i, f in enumerate(image_or_frames)]
    else:
        frames = [load_image(image_or_frames, "token_map image")]
    if not frames:
        raise ValueError("token_map: no image given")
    if len(frames) == t:
        return frames
    if len(frames) > t:  # e.g. Qwen2.5-VL's grid counts frame pairs: show the first of each group
        return [frames[i * len(frames) // t] for i in range(t)]
    raise ValueError(f"token_map: the grid has {t} frames but {len(frames)} images were given")


def token_map(
    image_or_frames: ImageLike | Sequence[ImageLike],
    assignment_or_reduction: Assignment | torch.Tensor | Sequence[int],
    grid: tuple[int, int, int] | tuple[int, int],
    *,
    cell: int | None = None,
    title: str | None = None,
    dim: float = 0.3,
    tint: float = 0.45,
    legend: bool = True,
) -> Image.Image:
    """The image (a strip of frames for T > 1) with the reduction drawn on its token grid.

    image_or_frames: one image, or the clip's frames (T of them, or a multiple of T: the first of each
      group is shown); each is stretched to the grid, so pass the view the model saw (e.g. the crop).
    assignment_or_reduction: an `Assignment` over the T*H*W tokens (row-major), or the indices a pruning
      method kept.
    grid: (T, H, W) or (H, W).
    cell: pixels per token side; default keeps a frame near 384 px (224 px per frame for clips).
    dim: brightness left to dropped tokens; tint: opacity of a merged group's colour.
    title: a line above the frames; legend: a line below them saying what the marks mean.
    """
    t, h, w = (1, *grid) if len(grid) == 2 else grid
    a = _as_assignment(assignment_or_reduction, t * h * w)
    frames = _frames(image_or_frames, t)
    if cell is None:
        cell = max(12, round((384 if t == 1 else 224) / max(h, w)))
    fw, fh = w * cell, h * cell
    font = ImageFont.load_default(size=max(8, min(14, cell // 3)))
    band = 22 if title else 0
    foot = 18 if legend else 0
    canvas = Image.new("RGBA", (t * fw + (t - 1) * _GAP, band + fh + foot), _BACKGROUND + (255,))
    for i, frame in enumerate(frames):
        canvas.paste(frame.convert("RGB").resize((fw, fh), Image.Resampling.BICUBIC), (i * (fw + _GAP), band))

    sizes = a.sizes().round().long().tolist()
    slot = a.slot.tolist()

    def box(token: int, inset: int = 0) -> tuple[int, int, int, int]:
        f, r, c = token // (h * w), (token // w) % h, token % w
        x0, y0 = f * (fw + _GAP) + c * cell, band + r * cell
        return x0 + inset, y0 + inset, x0 + cell - 1 - inset, y0 + cell - 1 - inset

    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    shade = ImageDraw.Draw(overlay)
    for token, s in enumerate(slot):
        if s < 0:
            shade.rectangle(box(token), fill=(0, 0, 0, round(255 * (1 - dim))))
        elif sizes[s] > 1:
            shade.rectangle(box(token), fill=group_colour(s) + (round(255 * tint),))
    canvas = Image.alpha_composite(canvas, overlay)

    draw = ImageDraw.Draw(canvas)
    for s, rep in enumerate(a.rep.tolist()):
        if sizes[s] > 1 and cell >= 12:  # the size, small, on the anchor (under its outline)
            x0, y0, x1, y1 = box(rep)
            draw.text(((x0 + x1) / 2, (y0 + y1) / 2), str(sizes[s]), font=font, anchor="mm",
                      fill=(255, 255, 255, 255), stroke_width=2 if cell >= 20 else 1, stroke_fill=(0, 0, 0, 255))
        draw.rectangle(box(rep), outline=(0, 0, 0, 255), width=1)
        draw.rectangle(box(rep, 1), outline=(255, 255, 255, 255), width=2 if cell >= 12 else 1)
    if title:
        draw.text((6, band // 2), title, font=ImageFont.load_default(size=14), anchor="lm", fill=(235, 235, 235, 255))
    if legend:
        draw.text((6, band + fh + foot // 2), "outlined: seen by the LLM   tint: merged group (size)   dark: dropped",
                  font=ImageFont.load_default(size=10), anchor="lm", fill=(200, 200, 200, 255))
    return canvas.convert("RGB")


def _model_view(image: Image.Image, pixel_values: torch.Tensor, processor) -> Image.Image:
    """The image as the vision tower saw it: the original's centre square when that is what the processor
    fed it (sharper than the low-resolution tensor), else the de-normalised pixel tensor."""
    improc = getattr(processor, "image_processor", processor)
    mean = torch.tensor(getattr(improc, "image_mean", [0.0] * 3), dtype=torch.float32)[:, None, None]
    std = torch.tensor(getattr(improc, "image_std", [1.0] * 3), dtype=torch.float32)[:, None, None]
    seen = ((pixel_values.float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    probe = np.asarray(square.resize((seen.shape[1], seen.shape[0]), Image.Resampling.BICUBIC), dtype=np.float32)
    if probe.shape == seen.shape and float(np.abs(probe - seen.astype(np.float32)).mean()) < 16.0:
        return square
    return Image.fromarray(seen)


def render_token_map(
    engine_or_model_path,
    image: ImageLike,
    method: str,
    budget: int | float,
    restore: bool = True,
    *,
    gamma: float = 0.5,
    options: dict | None = None,
    device: str = "cpu",
    **draw,
) -> Image.Image:
    """Run `method` (pre-LLM) at `budget` on one image with a LLaVA-family model and draw the token map.

    engine_or_model_path: an `Engine`, or anything `Engine.from_pretrained` takes ('default', a folder,
    'random:llava-tiny'). `draw` goes to `token_map` (cell, title, dim, tint).
    """
    from restore.config import ReductionConfig, RestoreConfig
    from restore.engine import Engine
    from restore.plan import Plan
    from restore.request import Request
    from restore.tokens import ImageTokens

    engine = engine_or_model_path if isinstance(engine_or_model_path, Engine) else Engine.from_pretrained(
        str(engine_or_model_path), device=device
    )
    adapter = engine.adapter
    if adapter.family != "llava":
        raise ValueError(f"render_token_map supports LLaVA models; this one is {adapter.family!r} "
                         "(call token_map with an Assignment instead)")
    config = ReductionConfig(
        method=method, budget=budget, options=options or {}, restore=RestoreConfig(enabled=restore, gamma=gamma)
    )
    plan = Plan.of(config)
    if plan.in_llm:
        raise ValueError(f"render_token_map draws pre-LLM methods; {method!r} reduces inside the LLM")
    picture = load_image(image, "image")
    with torch.inference_mode():
        prompt = engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1)
        prepared = adapter.prepare(Request(prompt, [picture]), 0)
        seq = adapter.encode([prepared])[0]
    span = seq.spans[0]
    if span.grid is None:
        raise ValueError("render_token_map: this model's image tokens do not form a grid")
    n = plan.stage_budget(span, 0)
    if n >= span.length or not plan.reduces:
        assignment = Assignment.identity(span.length)
    else:
        tokens = ImageTokens(
            features=seq.embeds[span.start : span.end].detach().float().cpu(),
            importance=span.importance, keys=span.keys, grid=span.grid,
        )
        assignment = plan.assignment(tokens, n)
    draw.setdefault("title", f"{method} {assignment.num_slots}/{span.length} tokens" + (" + RESTORE" if restore else ""))
    view = _model_view(picture, prepared.vision["pixel_values"][0], engine.processor)
    return token_map(view, assignment, span.grid, **draw)
