"""Frame helpers shared by the adapters of models that take video.

Without torchvision no video processor can be built, so adapters turn frames
into the model's video tensors with the image processor's settings and expand
the prompt's video placeholder the way the processor would.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from restore.request import Request, load_image


def load_frames(request: Request, index: int) -> list[Image.Image]:
    if request.video is None:
        return []
    if len(request.video) == 0:
        raise ValueError(f"request {index}: video has no frames; give at least one frame or video=None")
    return [load_image(f, f"request {index} video frame {j}") for j, f in enumerate(request.video)]


def frames_to_array(
    frames: list[Image.Image], height: int, width: int, resample, rescale: float | None, mean, std
) -> np.ndarray:
    """(F, C, height, width) float32: each frame resized, rescaled and normalised as an image processor does."""
    out = []
    for f in frames:
        if f.size != (width, height):
            f = f.resize((width, height), resample=Image.Resampling(int(resample)))
        a = np.asarray(f, dtype=np.float32)
        if rescale is not None:
            a = a * rescale
        if mean is not None:
            a = (a - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        out.append(a.transpose(2, 0, 1))
    return np.stack(out)


def expand_and_tokenize(processor, prompt: str, image_repl: list[str], video_repl: list[str]) -> torch.Tensor:
    """The processor's own placeholder expansion and tokenisation, for inputs it cannot process itself."""
    texts, _ = processor.get_text_with_replacements([prompt], image_repl, video_repl)
    return processor.tokenizer(texts, return_tensors="pt")["input_ids"]
