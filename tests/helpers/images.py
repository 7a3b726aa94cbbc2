"""Generated images for tests: random pixels, seeded."""

import numpy as np
from PIL import Image


def make_image(seed: int, size=(20, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def frames(n: int, seed: int = 0, size=(56, 56)) -> list[Image.Image]:
    """n random frames of one size (a video given as frames)."""
    return [make_image(seed + i, size) for i in range(n)]
