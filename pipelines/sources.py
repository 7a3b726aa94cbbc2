"""Inputs: list them (local or s3://, folder, glob or manifest), read their bytes, decode them.

A listing row is `{id, uri, question}`: `id` is the manifest's id or
sha1(uri)[:16] (stable across runs and machines), `question` is None unless a
manifest row or a questions file gives one. Rows come sorted by uri.

Decoding never trusts the file name: a folder listing keeps files by
extension, but a file named like an image that is not one becomes a row whose
decode raises `DecodeError` naming the uri and the cause, which the pipeline
turns into an error row. `decode_batch` is the CPU map stage of the Ray Data
graph: it reads and decodes a batch and hands the GPU actor ready RGB pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.storage import filesystem, full_uri, is_remote

if TYPE_CHECKING:
    from pipelines.config import LabelJob

logger = logging.getLogger(__name__)

EXTENSIONS = {
    "images": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"),
    "videos": (".mp4", ".webm", ".mkv", ".avi", ".mov"),
}
MANIFEST_EXTENSIONS = (".parquet", ".jsonl")
_GLOB_CHARS = set("*?[")


class SourceError(ValueError):
    """An input that cannot be listed, read or decoded; the message names the uri and the cause."""


class ReadError(SourceError):
    """The bytes of an input could not be read."""


class DecodeError(SourceError):
    """The bytes of an input are not a decodable image or video (corrupt, truncated, empty, unsupported)."""


def stable_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- listing


def list_inputs(
    uri: str,
    kind: str,
    endpoint_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Rows {id, uri, question} for a folder, a glob, a single file or a manifest, sorted by uri.

    Raises FileNotFoundError naming `uri` when it does not exist; an existing
    location without matching files gives an empty list (the caller decides).
    """
    fs, path = filesystem(uri, endpoint_url, storage_options)
    fs.invalidate_cache()
    lowered = path.lower()
    if lowered.endswith(MANIFEST_EXTENSIONS) and not _GLOB_CHARS & set(path):
        rows = _read_manifest(fs, path, uri)
    else:
        if _GLOB_CHARS & set(path):
            files = [f for f in fs.glob(path) if f.lower().endswith(EXTENSIONS[kind])]
        elif fs.isfile(path):
            files = [path]  # one file given explicitly: keep it whatever its name
        elif fs.isdir(path):
            files = [f for f in fs.find(path) if f.lower().endswith(EXTENSIONS[kind])]
        else:
            raise FileNotFoundError(f"input {uri} does not exist")
        rows = [{"id": None, "uri": full_uri(fs, f), "question": None} for f in files]
    rows.sort(key=lambda r: r["uri"])
    if limit is not None:
        rows = rows[:limit]
    for r in rows:
        r["id"] = str(r["id"]) if r["id"] is not None else stable_id(r["uri"])
    _check_unique(rows, uri)
    return rows


def _read_manifest(fs, path: str, uri: str) -> list[dict]:
    if not fs.exists(path):
        raise FileNotFoundError(f"manifest {uri} does not exist")
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            records = pq.read_table(fh).to_pylist()
    else:
        records = []
        with fs.open(path, "rt") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise SourceError(f"manifest {uri} line {n} is not JSON: {err}") from None
    base = full_uri(fs, posixpath.dirname(path))
    rows = []
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not rec.get("uri"):
            raise SourceError(f"manifest {uri} row {n} has no 'uri' field; each row needs uri (and optional id, question)")
        target = str(rec["uri"])
        # A relative uri is relative to the manifest, so a corpus can be moved with its manifest.
        if not is_remote(target) and not target.startswith("/"):
            target = f"{base}/{target}"
        question = rec.get("question")
        rows.append({"id": rec.get("id"), "uri": target, "question": str(question) if question is not None else None})
    return rows


def _check_unique(rows: list[dict], uri: str) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if r["id"] in seen:
            raise SourceError(f"input {uri}: id {r['id']!r} is used by {seen[r['id']]} and {r['uri']}; ids must be unique")
        seen[r["id"]] = r["uri"]


def load_questions(uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Questions from a JSONL file of `{"question": ...}` lines (local or s3://)."""
    fs, path = filesystem(uri, endpoint_url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"questions file {uri} does not exist")
    questions = []
    with fs.open(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)["question"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SourceError(f"questions file {uri} line {n}: expected a JSON object with a 'question' field") from None
            questions.append(str(q))
    if not questions:
        raise SourceError(f"questions file {uri} has no questions")
    return questions


def with_questions(rows: list[dict], questions: list[str]) -> list[dict]:
    """Every row once per question; ids get a suffix from the question so they stay stable and unique."""
    return [
        {"id": f"{r['id']}-{stable_id(q)[:8]}", "uri": r["uri"], "question": q} for r in rows for q in questions
    ]


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


def decode_image(data: bytes, uri: str, max_pixels: int | None = None) -> Image.Image:
    """An RGB image (first frame of an animation), shrunk to `max_pixels`; DecodeError names uri and cause."""
    if not data:
        raise DecodeError(f"{uri}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # Image.open is lazy: truncation only shows when the pixels are read
            out = img.convert("RGB")
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


# ----------------------------------------------------------------------------- the CPU map stage

# What the decode stage hands the predictor: RGB pixels as raw bytes with their shape
# ((H, W, 3) for an image, (T, H, W, 3) for a video), so no decoder runs on the GPU actor.
DECODED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("question", pa.string()),
        pa.field("pixels", pa.large_binary()),
        pa.field("shape", pa.list_(pa.int32())),
        pa.field("timestamps", pa.list_(pa.float64())),
        pa.field("fps", pa.float64()),
        pa.field("error", pa.string()),
    ]
)


def decode_row(row: dict, job: LabelJob) -> dict:
    """One listing row read and decoded into a DECODED_SCHEMA row; failures become `error`."""
    out = {"id": row["id"], "uri": row["uri"], "question": row.get("question"), "pixels": None, "shape": None,
           "timestamps": None, "fps": None, "error": None}
    try:
        data = read_bytes(row["uri"], job.endpoint_url, job.storage_options)
        if job.kind == "images":
            arr = np.asarray(decode_image(data, row["uri"], job.max_pixels))
        else:
            video = decode_video(data, row["uri"], job.frames, job.fps, job.max_pixels)
            size = video.frames[0].size
            # Frames of one stream share a size; resize defensively for odd streams that change it.
            arr = np.stack([np.asarray(f if f.size == size else f.resize(size)) for f in video.frames])
            out["timestamps"], out["fps"] = video.timestamps, video.fps
        out["pixels"], out["shape"] = arr.tobytes(), list(arr.shape)
    except SourceError as err:
        logger.info("decode failed: %s", err)
        out["error"] = str(err)
    return out


def decode_batch(batch: pa.Table, job: LabelJob) -> pa.Table:
    """Ray Data map stage (CPU tasks): read (threads, for object-store latency) and decode a batch."""
    rows = batch.to_pylist()
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(rows)))) as pool:
        out = list(pool.map(lambda r: decode_row(r, job), rows))
    return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


def media_of(row: dict) -> list[Image.Image]:
    """The PIL images of a decoded row (one for an image, the sampled frames for a video)."""
    arr = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(row["shape"])
    if arr.ndim == 3:
        return [Image.fromarray(arr)]
    return [Image.fromarray(frame) for frame in arr]
