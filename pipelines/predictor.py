"""`LabelPredictor`: the inference actor of the Ray Data graph (one `restore.Engine` per actor).

It receives rows already decoded by the CPU stage (`sources.decode_batch`), so
no image or video decoder runs on the GPU actor (DESIGN §7); rows that arrive
undecoded (a direct call) are decoded here. Every input row gives exactly one
output row in OUTPUT_SCHEMA, errors included: a decode failure, or a generate
failure isolated by retrying the batch one row at a time, becomes
`status="error"` with the message in `error`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from typing import Any

import pyarrow as pa

from pipelines.config import LabelJob
from pipelines.sources import decode_row, media_of

logger = logging.getLogger(__name__)

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("prompt", pa.string()),  # the question for vqa, the caption prompt otherwise
        pa.field("answer", pa.string()),  # null on error rows
        pa.field("model", pa.string()),
        pa.field("method", pa.string()),
        pa.field("budget", pa.float64()),  # tokens per image (64.0) or a ratio (0.25); null keeps all
        pa.field("restore", pa.bool_()),  # RESTORE was in effect (requested and the method reduces)
        pa.field("visual_tokens", pa.int64()),  # before reduction, all images/frames of the row
        pa.field("kept_tokens", pa.int64()),  # what the LLM saw
        pa.field("prompt_tokens", pa.int64()),  # sequence length the LLM prefilled (text + kept visual)
        pa.field("prefill_ms", pa.float64()),  # prefill of the batch this row was part of
        pa.field("full_prefill_ms_est", pa.float64()),  # prefill_ms x decoder FLOPs with all tokens / as run
        pa.field("decode_ms", pa.float64()),  # decode loop of that batch
        pa.field("generated_tokens", pa.int64()),
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),  # names the uri and the cause; null when ok
        pa.field("worker", pa.string()),  # host:pid of the actor
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)


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
        import torch

        from restore import Engine

        self.job = job if isinstance(job, LabelJob) else LabelJob(**job)
        device = "cuda" if self.job.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        if self.job.gpus_per_worker > 0 and device == "cpu":
            logger.warning("gpus_per_worker=%s but CUDA is not available here; running on CPU", self.job.gpus_per_worker)
        self.reduction = self.job.reduction()
        self.engine = Engine.from_pretrained(self.job.model, reduction=self.reduction, device=device, dtype=self.job.dtype)
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
        error = row.get("error") or (result if isinstance(result, str) else None)
        if error is None and result is None:
            error = f"{row['uri']}: no result"
        budget = self.reduction.budget
        out = {
            "id": row["id"], "uri": row["uri"], "task": self.job.task, "prompt": row["prompt"], "answer": None,
            "model": self.job.model, "method": self.reduction.method,
            "budget": float(budget) if budget is not None else None,
            "restore": bool(self.reduction.restore.enabled and self.reduction.reduces),
            "visual_tokens": None, "kept_tokens": None, "prompt_tokens": None, "prefill_ms": None,
            "full_prefill_ms_est": None, "decode_ms": None, "generated_tokens": None,
            "status": "error" if error else "ok", "error": error, "worker": self.worker,
            "finished_at": dt.datetime.now(dt.UTC),
        }
        if not error:
            out.update(result_fields(result))
        return out


def result_fields(result) -> dict:
    """The OUTPUT_SCHEMA fields an engine `Result` fills: the answer and its token and timing stats."""
    s = result.stats
    return {
        "answer": result.text, "visual_tokens": s.visual_tokens, "kept_tokens": s.kept_tokens,
        "prompt_tokens": s.prompt_tokens, "prefill_ms": s.prefill_ms,
        "full_prefill_ms_est": s.full_prefill_ms_est, "decode_ms": s.decode_ms,
        "generated_tokens": s.generated_tokens,
    }
