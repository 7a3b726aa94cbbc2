"""Prompt and frame helpers shared by the adapters of models that take video.

Without torchvision no video processor can be built, so adapters turn frames
into the model's video tensors with the image processor's settings and expand
the prompt's video placeholder the way the processor would.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from restore.models.base import Adapter, build_prompt
from restore.request import Request, load_image


def build_media_prompt(
    adapter: Adapter,
    request: Request,
    num_images: int,
    has_video: bool,
    index: int,
    image_placeholder: str,
    video_placeholder: str,
) -> str:
    """`build_prompt` for requests that may carry a video as well as images."""
    if not has_video:
        if request.prompt.count(video_placeholder):
            raise ValueError(
                f"request {index}: the prompt has the video placeholder {video_placeholder!r} but the request "
                "has no video frames"
            )
        return build_prompt(adapter, request, num_images, index, image_placeholder)
    n_img = request.prompt.count(image_placeholder)
    n_vid = request.prompt.count(video_placeholder)
    template = getattr(adapter.processor, "chat_template", None)
    use_chat = request.chat
    if use_chat is None:
        use_chat = n_img == 0 and n_vid == 0 and template is not None
    if use_chat:
        if template is None:
            raise ValueError(f"request {index}: chat=True but the processor has no chat template")
        if n_img or n_vid:
            raise ValueError(
                f"request {index}: with the chat template, leave the placeholders {image_placeholder!r} / "
                f"{video_placeholder!r} out of the prompt"
            )
        content = [{"type": "image"}] * num_images + [{"type": "video"}, {"type": "text", "text": request.prompt}]
        messages = [{"role": "user", "content": content}]
        return adapter.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if n_img != num_images or n_vid != 1:
        raise ValueError(
            f"request {index}: the prompt has {n_img} image placeholder(s) {image_placeholder!r} for {num_images} "
            f"image(s) and {n_vid} video placeholder(s) {video_placeholder!r} for 1 video; put one placeholder "
            "per image and one for the video in the prompt, or use a processor with a chat template"
        )
    return request.prompt


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
