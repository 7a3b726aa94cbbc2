import numpy as np
import pytest
from PIL import Image

from tests.tiny import tiny_llava


@pytest.fixture(scope="session")
def llava():
    return tiny_llava()


def make_image(seed: int, size=(20, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
