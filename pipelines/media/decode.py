"""Read and decode media: the bytes behind a URI (local or s3://), images and sampled video frames.

Decoding never trusts the file name: bytes that are not an image or a video
raise `DecodeError` naming the uri and the cause (corrupt, truncated, empty,
unsupported), which the batch job turns into an error row and the online API
into a 400. Shared by `pipelines.batch` and `pipelines.serve`.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image

from pipelines.media.storage import filesystem

logger = logging.getLogger(__name__)


class SourceError(ValueError):
    """An input that cannot be listed, read or decoded; the message names the uri and the cause."""


class ReadError(SourceError):
    """The bytes of an input could not be read."""


class DecodeError(SourceError):
    """The bytes of an input are not a decodable image or video (corrupt, truncated, empty, unsupported)."""


# ----------------------------------------------------------------------------- reading


def read_bytes(uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None) -> bytes:
    try:
        fs, path = filesystem(uri, endpoint_url, storage_options)
        return fs.cat_file(path)
    except Exception as err:  # backends raise many types (FileNotFoundError, botocore, OSError); keep the cause
        raise ReadError(f"{uri}: cannot read ({_cause(err)})") from err


# ----------------------------------------------------------------------------- decoding


def _cause(err: BaseException) -> str:
    """`Type: message` without the noise decoders add (BytesIO reprs, errno prefixes, '<none>' file names)."""
    msg = getattr(err, "strerror", None) or str(err)
    msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", msg)
    msg = re.sub(r":\s*'<none>'$", "", msg).strip()
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def _fit(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """`img` shrunk (aspect kept) so that width*height <= max_pixels."""
    w, h = img.size
    if not max_pixels or w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


# Where an image is transparent it is composited on a neutral mid grey: neither black nor white, so it
# reads as "no content" rather than as a dark or bright object, and it is the same for every model whatever
# its pixel normalisation. The RGB hidden under fully transparent pixels (often garbage) never shows.
BACKGROUND = (128, 128, 128)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})

# EXIF Orientation -> the transpose that shows the picture upright (the mapping PIL.ImageOps.exif_transpose uses).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image, uri: str) -> int:
    """The EXIF Orientation tag (1 when absent); a malformed EXIF block only loses the rotation, with a warning."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception as err:  # corrupt EXIF in an otherwise fine file: keep the pixels as stored
        logger.warning("%s: unreadable EXIF orientation (%s); kept as stored", uri, _cause(err))
        return 1


def _grey_levels(a: np.ndarray) -> np.ndarray:
    """A high-bit-depth single-band array (modes I;16*, I, F) as 8-bit grey levels.

    Scaled by the range the values are stored in, not stretched per image, so a
    dark 16-bit picture stays dark: unsigned 16-bit (I;16) and integers within
    0..65535 (mode I, as Pillow decodes 16-bit PGM) divide by 257; floats (F)
    within 0..1 multiply by 255 and floats within 0..255 are kept. Anything else
    (signed or 32-bit integer data, other float ranges) is stretched from its
    minimum to its maximum. NaN and -inf map to the minimum, +inf to the maximum.
    """
    is_float = a.dtype.kind == "f"
    x = a.astype(np.float32)
    finite = np.isfinite(x)
    lo = float(x[finite].min()) if finite.any() else 0.0
    hi = float(x[finite].max()) if finite.any() else 0.0
    if not finite.all():
        x = np.where(np.isposinf(x), hi, np.where(finite, x, lo))
    if is_float and lo >= 0 and hi <= 1:
        x = x * 255
    elif is_float and lo >= 0 and hi <= 255:
        pass
    elif (a.dtype.kind == "u" and a.dtype.itemsize <= 2) or (not is_float and lo >= 0 and hi <= 65535):
        x = x / 257
    elif hi > lo:
        x = (x - lo) * (255 / (hi - lo))
    else:
        x = np.full_like(x, 0 if hi <= 0 else 255)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow decodes; transparency (alpha or a tRNS colour key) composited on BACKGROUND."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img)
        grey = Image.fromarray(_grey_levels(values))
        key = img.info.get("transparency")
        if isinstance(key, int | float):  # a colour key on the stored values (PNG tRNS)
            alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
            return _on_background(Image.merge("RGBA", (grey, grey, grey, alpha)))
        return grey.convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_background(img.convert("RGBA"))  # P, L and RGB apply their transparency key here
    return img.convert("RGB")  # 1, L, P, RGB, CMYK, YCbCr, LAB, HSV, ...


def decode_image(data: bytes, uri: str, max_pixels: int | None = None) -> Image.Image:
    """An upright 8-bit RGB image, shrunk to `max_pixels`; DecodeError names uri and cause.

    - Multi-image files give their first image: the first frame of an animation
      (GIF, APNG, WebP, AVIF), the first page of a multi-page TIFF, the first
      picture of an MPO.
    - The EXIF Orientation tag is applied (a phone photo taken upright comes out
      upright), as `PIL.ImageOps.exif_transpose` does.
    - Every mode becomes 8-bit RGB: 16-bit and float images are scaled by their
      stored range (`_grey_levels`: 16-bit /257), palette, 1-bit, grey, CMYK
      convert, and transparent pixels are composited on BACKGROUND (mid grey).
    """
    if not data:
        raise DecodeError(f"{uri}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # Image.open is lazy: truncation only shows when the pixels are read
            out = _to_rgb(img)
            method = _UPRIGHT.get(_orientation(img, uri))
        if method is not None:
            out = out.transpose(method)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DecodeError(f"{uri}: not a decodable image ({_cause(err)})") from err
    return _fit(out, max_pixels)


@dataclass
class DecodedVideo:
    frames: list[Image.Image]
    timestamps: list[float]
    fps: float | None  # rate of the sampled frames, what a video model needs for temporal positions
    source_fps: float | None = None
    duration: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _targets(duration: float, frames: int, fps: float | None) -> list[float]:
    """Times to sample: every 1/fps s when fps is given and that fits in `frames`, else `frames` uniform."""
    if fps:
        n = max(1, math.floor(duration * fps))
        if n <= frames:
            return [i / fps for i in range(n)]
    return [(i + 0.5) * duration / frames for i in range(frames)]


def _select(decoded: Iterable[tuple[float, Any]], targets: list[float]) -> list[tuple[float, Any]]:
    """For each target time the nearest decoded frame, in order, each frame at most once."""
    chosen: list[tuple[float, Any]] = []
    prev: tuple[float, Any] | None = None
    j = 0
    for cur in decoded:
        while j < len(targets) and cur[0] >= targets[j]:
            # A tie goes to the earlier frame: uniform targets fall exactly between frames when the clip
            # has as many frames as asked, and taking the later one would skip the first and repeat the last.
            pick = prev if prev is not None and targets[j] - prev[0] <= cur[0] - targets[j] else cur
            if not chosen or chosen[-1][1] is not pick[1]:
                chosen.append(pick)
            j += 1
        if j == len(targets):
            break
        prev = cur
    if j < len(targets) and prev is not None and (not chosen or chosen[-1][1] is not prev[1]):
        chosen.append(prev)  # targets past the last frame (rounded durations) get the last frame
    return chosen


def decode_video(
    data: bytes, uri: str, frames: int = 8, fps: float | None = None, max_pixels: int | None = None
) -> DecodedVideo:
    """Sample `frames` frames uniformly (or at `fps`, at most `frames`) from a video given as bytes.

    Frames are decoded in one pass and only the sampled ones are converted to
    images. DecodeError names the uri and the cause (corrupt, truncated, empty,
    no video stream, no decodable frame).
    """
    import av

    if not data:
        raise DecodeError(f"{uri}: empty file (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DecodeError(f"{uri}: no video stream (audio-only or not a video)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            source_fps = float(stream.average_rate) if stream.average_rate else None
            duration = None
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base

            def timed():
                for i, frame in enumerate(container.decode(stream)):
                    t = frame.time
                    if t is None:
                        t = i / source_fps if source_fps else float(i)
                    yield float(t), frame

            if duration:
                picked = _select(timed(), _targets(duration, frames, fps))
            else:
                # No duration in the container: keep every frame to learn it (rare; short clips).
                logger.warning("%s: container has no duration; decoding every frame to sample", uri)
                every = list(timed())
                if every:
                    step = 1.0 / source_fps if source_fps else 0.0
                    duration = every[-1][0] - every[0][0] + step
                    picked = _select(every, [every[0][0] + t for t in _targets(duration or 1.0, frames, fps)])
                else:
                    picked = []
            images = [_fit(f.to_image().convert("RGB"), max_pixels) for _, f in picked]
            times = [t for t, _ in picked]
    except DecodeError:
        raise
    except Exception as err:  # PyAV raises InvalidDataError (a ValueError), other FFmpegErrors, OSError, ...
        raise DecodeError(f"{uri}: not a decodable video ({_cause(err)})") from err
    if not images:
        raise DecodeError(f"{uri}: no decodable video frames")
    if len(times) > 1 and times[-1] > times[0]:
        sample_fps = (len(times) - 1) / (times[-1] - times[0])
    else:
        sample_fps = fps or source_fps
    return DecodedVideo(images, times, sample_fps, source_fps, duration)
