"""Generated videos for tests: tiny mp4 clips encoded with PyAV."""

from __future__ import annotations

from PIL import Image

from pipelines.batch.demo import encode_mp4


def clip(seed: int) -> bytes:
    """A tiny mp4: 6 frames at 4 fps, 32 px, a bright square moving right."""
    frames = []
    for i in range(6):
        img = Image.new("RGB", (32, 32), (30 + 20 * seed,) * 3)
        img.paste((255, 255, 255), (4 * i, 12, 4 * i + 8, 20))
        frames.append(img)
    return encode_mp4(frames)
