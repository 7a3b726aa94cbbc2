"""Deterministic synthetic scenes: coloured shapes on a plain background."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 180), "orange": (240, 140, 30),
}
SHAPES = ["circle", "square", "triangle", "star"]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy - rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)


def scene(seed: int, size: int = 336, objects: int = 4) -> tuple[Image.Image, list[dict]]:
    """An image and the list of objects in it (colour, shape, box), the same for the same seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (235, 235, 228))
    draw = ImageDraw.Draw(img)
    placed = []
    for _ in range(objects):
        side = rng.randint(size // 10, size // 4)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        draw_shape(draw, shape, (x, y, x + side, y + side), COLOURS[colour])
        placed.append({"colour": colour, "shape": shape, "box": (x, y, x + side, y + side)})
    return img, placed
