"""`pipelines.batch.decode`: the CPU map stage (no Ray started: the stage is a plain function of a batch)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from pipelines.batch.config import LabelJob
from pipelines.batch.decode import DECODED_SCHEMA, decode_batch, media_of
from restore.zoo.world import scene_image
from tests.helpers.videos import clip


def test_decode_workers_do_not_import_the_model_stack():
    # A decode task unpickles the LabelJob; if that pulled in torch and transformers, every
    # decode worker would spend seconds importing them at the start of a job, beside the actor.
    import pickle
    import subprocess
    import sys

    job = pickle.dumps(LabelJob(kind="images", input=".", output="out", method="fastv", budget=8))
    code = ("import sys, pickle, pipelines.batch.decode; job = pickle.loads(sys.stdin.buffer.read()); "
            "print(job.method, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], input=job, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "fastv []", out.stdout + out.stderr


def test_decode_batch_gives_pixels_or_an_error_per_row(tmp_path):
    img = scene_image(0, 64)
    img.save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "c.mp4").write_bytes(clip(0))
    rows = [{"id": "a", "uri": str(tmp_path / "a.png"), "question": None},
            {"id": "b", "uri": str(tmp_path / "bad.png"), "question": "what ?"},
            {"id": "m", "uri": str(tmp_path / "missing.png"), "question": None}]
    job = LabelJob(kind="images", input=str(tmp_path), output=str(tmp_path / "out"), max_pixels=32 * 32)
    out = decode_batch(pa.Table.from_pylist(rows), job)
    assert out.schema.equals(DECODED_SCHEMA)
    a, b, m = out.to_pylist()
    assert a["error"] is None and a["shape"] == [32, 32, 3]
    (pixels,) = media_of(a)
    assert pixels.size == (32, 32) and np.asarray(pixels).shape == (32, 32, 3)
    assert b["pixels"] is None and b["question"] == "what ?" and "bad.png" in b["error"]
    assert "not a decodable image" in b["error"]
    assert m["pixels"] is None and "missing.png" in m["error"] and "cannot read" in m["error"]

    videos = LabelJob(kind="videos", input=str(tmp_path), output=str(tmp_path / "out"), frames=3)
    (row,) = decode_batch(pa.Table.from_pylist([{"id": "c", "uri": str(tmp_path / "c.mp4"), "question": None}]),
                          videos).to_pylist()
    assert row["error"] is None and row["shape"] == [3, 32, 32, 3] and len(row["timestamps"]) == 3
    assert len(media_of(row)) == 3 and row["fps"] > 0
    buf = io.BytesIO()
    media_of(row)[0].save(buf, "PNG")  # frames are ordinary RGB images
