"""The CPU map stage of the labeling graph: read and decode a batch of listing rows.

`decode_batch` runs as Ray Data CPU tasks and hands the inference actors ready
RGB pixels (DECODED_SCHEMA), so no image or video decoder runs on the GPU actor
(DESIGN §7). A row that cannot be read or decoded keeps its id and carries the
error, which the predictor turns into an error row.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.media.decode import SourceError, decode_image, decode_video, read_bytes

if TYPE_CHECKING:
    from pipelines.batch.config import LabelJob

logger = logging.getLogger(__name__)

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
