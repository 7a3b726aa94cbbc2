"""`pipelines.rows`: the one output row, the same in the batch job's Parquet and the online API's JSON."""

from __future__ import annotations

import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.encoders import jsonable_encoder
from fastapi.testclient import TestClient

from pipelines.rows import OUTPUT_SCHEMA, now, output_row
from pipelines.serve.app import create_app
from pipelines.serve.settings import ServeSettings
from restore.config import ReductionConfig
from restore.request import Result, Stats
from tests.helpers.images import png_b64

STATS = Stats(method="divprune", budget=8, restore=True, visual_tokens=36, kept_tokens=8, size_min=1.0,
              size_mean=4.5, size_max=9.0, prompt_tokens=14, encode_ms=1.0, reduce_ms=0.5, prefill_ms=2.0,
              layer_tokens=[14, 14, 14], full_prefill_ms_est=6.0, decode_ms=3.0, generated_tokens=2, batch_size=1)
RESULT = Result(text="a red circle", token_ids=[5, 6], stats=STATS)
REDUCTION = ReductionConfig(method="divprune", budget=8)


def parquet_round_trip(row: dict) -> dict:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=OUTPUT_SCHEMA), buf)
    return pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()[0]


def test_one_row_for_parquet_and_json():
    row = output_row("r1", "s3://b/x.png", "caption", "describe the image .", "m", REDUCTION, RESULT, "host:1")
    assert list(row) == OUTPUT_SCHEMA.names
    assert row["finished_at"].tzinfo is not None and row["finished_at"].microsecond % 1000 == 0
    assert parquet_round_trip(row) == row  # nothing lost or changed by Parquet (ms precision, UTC)
    assert (row["answer"], row["kept_tokens"], row["budget"], row["restore"], row["status"]) == (
        "a red circle", 8, 8.0, True, "ok")
    http = json.loads(json.dumps(jsonable_encoder(row)))
    assert http == {**row, "finished_at": row["finished_at"].isoformat()}
    assert dt.datetime.fromisoformat(http["finished_at"]) == row["finished_at"]


def test_error_rows_keep_the_request_and_drop_the_stats():
    at = now()
    row = output_row("r2", "/d/bad.png", "vqa", "what ?", "m", ReductionConfig(method="pool", budget=0.25,
                     restore={"enabled": False}), "/d/bad.png: empty file (0 bytes)", "host:2", finished_at=at)
    assert parquet_round_trip(row) == row
    assert (row["status"], row["error"], row["answer"], row["kept_tokens"]) == (
        "error", "/d/bad.png: empty file (0 bytes)", None, None)
    assert (row["method"], row["budget"], row["restore"], row["finished_at"]) == ("pool", 0.25, False, at)
    full = output_row("r3", "u", "caption", None, "m", ReductionConfig(), RESULT, "w")
    assert (full["method"], full["budget"], full["restore"]) == ("none", None, False)


class _Engine:
    def media_prompt(self, text: str, count: int) -> str:
        return f"<image> {text}"


class _Service:
    """Just what the /v1/caption route uses: settings, an engine's prompt policy, open and wait."""

    def __init__(self) -> None:
        self.settings = ServeSettings(model="m", reduction=REDUCTION, calibrate=False)
        self.engine = _Engine()

    async def open(self, request, generation, on_delta=None):
        return request

    async def wait(self, job, timeout=None):
        return RESULT


def test_http_caption_rows_are_the_batch_rows():
    client = TestClient(create_app(_Service()))
    (http,) = client.post("/v1/caption", json={"image": png_b64(), "id": "r1"}).json()["rows"]
    expected = output_row("r1", "inline:r1", "caption", "describe the image .", "m", REDUCTION, RESULT,
                          http["worker"], finished_at=dt.datetime.fromisoformat(http["finished_at"]))
    assert http == jsonable_encoder(parquet_round_trip(expected))
