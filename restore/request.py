"""What a caller asks the engine for, and what it gets back."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from restore.config import ReductionConfig

ImageLike = Image.Image | str | Path | bytes


@dataclass
class Request:
    """One prompt with its images, or with a video given as frames.

    `prompt` may contain the model's image placeholder(s) (e.g. '<image>'); when
    it has none and `chat` is not False, the processor's chat template places the
    images. `reduction` overrides the engine's default for this request only.
    """

    prompt: str
    images: list[ImageLike] = field(default_factory=list)
    video: list[ImageLike] | None = None
    fps: float | None = None
    reduction: ReductionConfig | None = None
    chat: bool | None = None


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stats: dict[str, Any]


def load_image(image: ImageLike, what: str) -> Image.Image:
    """A decoded RGB image, or a ValueError naming `what` and the cause."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        if isinstance(image, bytes):
            if not image:
                raise ValueError("empty bytes")
            img = Image.open(io.BytesIO(image))
        else:
            img = Image.open(Path(image))
        img.load()
        return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        name = f"{image!s}" if not isinstance(image, bytes) else f"{len(image)} bytes"
        raise ValueError(f"{what}: cannot read image {name}: {err}") from None
