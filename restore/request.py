"""What a caller asks the engine for, and what it gets back."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Stats:
    """What the engine measured for one request (the group it was encoded and prefilled with, for those
    timings)."""

    method: str  # reduction method ('none' keeps every token)
    budget: int | float | None  # tokens kept per image (per frame for video) or a ratio; None keeps all
    restore: bool  # RESTORE was in effect (requested and the method reduces)
    visual_tokens: int  # before reduction, all images/frames of the request
    kept_tokens: int  # what the LLM saw
    size_min: float  # sizes (original tokens each kept token stands for)
    size_mean: float
    size_max: float
    prompt_tokens: int  # sequence length the LLM prefilled (text + kept visual)
    encode_ms: float  # vision tower of the group it was encoded with
    reduce_ms: float  # pre-LLM reduction of that group
    prefill_ms: float  # LLM prefill of the group it was prefilled with
    layer_tokens: list[int]  # tokens each decoder layer ran on (in-LLM methods: all of them before K)
    full_prefill_ms_est: float  # prefill_ms x decoder FLOPs with every visual token / as run (restore.flops)
    decode_ms: float  # from its prefill to its last token, wall clock (steps shared with other requests)
    generated_tokens: int
    batch_size: int  # requests prefilled together with it (Engine.generate: the whole list)

    @property
    def prefill_speedup_est(self) -> float | None:
        """Estimated full-token prefill time over the measured one."""
        return self.full_prefill_ms_est / self.prefill_ms if self.prefill_ms else None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stats: Stats


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
