"""`LabelPredictor`: the inference actor of the Ray Data graph (one `restore.Engine` per actor).

It receives rows already decoded by the CPU stage (`pipelines.batch.decode`), so
no image or video decoder runs on the GPU actor (DESIGN §7); rows that arrive
undecoded (a direct call) are decoded here. Every input row gives exactly one
output row (`pipelines.rows`), errors included: a decode failure, or a generate
failure isolated by retrying the batch one row at a time, becomes
`status="error"` with the message in `error`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import pyarrow as pa

from pipelines.batch.config import LabelJob
from pipelines.batch.decode import decode_row, media_of
from pipelines.rows import OUTPUT_SCHEMA, output_row
from restore.config import ModelConfig

logger = logging.getLogger(__name__)


def _rows_of(batch: Any) -> list[dict]:
    """Rows from a pyarrow Table or a dict of equal-length numpy arrays / lists."""
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    rows = []
    for i in range(n):
        row = {}
        for k in keys:
            v = batch[k][i]
            row[k] = v.tolist() if hasattr(v, "tolist") and k in ("shape", "timestamps") else v
        rows.append(row)
    return rows


class LabelPredictor:
    """Callable class for `Dataset.map_batches`: decoded rows in, OUTPUT_SCHEMA table out."""

    def __init__(self, job: LabelJob | dict) -> None:
        from restore import Engine

        self.job = job if isinstance(job, LabelJob) else LabelJob(**job)
        gpus = self.job.gpus_per_worker
        model = ModelConfig(path=self.job.model, device="auto" if gpus > 0 else "cpu", dtype=self.job.dtype)
        device = model.resolved_device()
        if gpus > 0 and device == "cpu":
            logger.warning("gpus_per_worker=%s but CUDA is not available here; running on CPU", gpus)
        self.reduction = self.job.reduction()
        self.engine = Engine.from_pretrained(model.path, reduction=self.reduction, device=device, dtype=model.dtype)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        logger.info("LabelPredictor on %s: model %s, %s", device, self.job.model, self.reduction)

    def _request(self, row: dict):
        from restore import Request

        media = media_of(row)
        text = self.engine.media_prompt(row["prompt"], len(media))
        if self.job.kind == "images":
            return Request(text, images=media)
        return Request(text, video=media, fps=row.get("fps"))

    def __call__(self, batch: Any) -> pa.Table:
        rows = _rows_of(batch)
        for i, row in enumerate(rows):
            if "pixels" not in row:  # undecoded rows (direct use): decode here
                rows[i] = row = decode_row(row, self.job)
            # A manifest's question is asked only in vqa; captions use the job's prompt.
            question = row.get("question") if self.job.task == "vqa" else None
            row["prompt"] = question or self.job.default_prompt()
        ok = [r for r in rows if r.get("error") is None]
        answers = self._generate(ok)
        return pa.Table.from_pylist([self._output(r, answers.get(r["id"])) for r in rows], schema=OUTPUT_SCHEMA)

    def _generate(self, rows: list[dict]) -> dict[str, Any]:
        """id -> Result or error message; one batch, or one row at a time if the batch fails."""
        if not rows:
            return {}
        try:
            results = self.engine.generate([self._request(r) for r in rows], max_new_tokens=self.job.max_new_tokens)
            return {r["id"]: res for r, res in zip(rows, results, strict=True)}
        except Exception as err:  # one bad row must not fail its neighbours: find it by running rows alone
            if len(rows) == 1:
                return {rows[0]["id"]: f"{rows[0]['uri']}: generation failed: {type(err).__name__}: {err}"}
            logger.warning("batch of %d failed (%s); retrying one row at a time", len(rows), err)
            out: dict[str, Any] = {}
            for r in rows:
                out.update(self._generate([r]))
            return out

    def _output(self, row: dict, result: Any) -> dict:
        if row.get("error"):
            result = row["error"]
        elif result is None:
            result = f"{row['uri']}: no result"
        return output_row(row["id"], row["uri"], self.job.task, row["prompt"], self.job.model, self.reduction,
                          result, self.worker)
