"""Generated images for tests: random pixels, or scenes of the default model's world; seeded."""

import base64
import io
import random

import numpy as np
from PIL import Image


def make_image(seed: int, size=(20, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def frames(n: int, seed: int = 0, size=(56, 56)) -> list[Image.Image]:
    """n random frames of one size (a video given as frames)."""
    return [make_image(seed + i, size) for i in range(n)]


def png_b64(seed: int = 0, size: int | None = None) -> str:
    """Base64 of a PNG of a random world scene (96 px, or resized to `size`)."""
    from restore.zoo import world

    img = world.render(world.random_scene(random.Random(seed)))
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()
