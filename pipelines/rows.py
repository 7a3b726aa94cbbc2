"""The output row: one contract for the batch job's Parquet rows and the online API's caption/VQA rows.

`OUTPUT_SCHEMA` is the Parquet schema of every part file the batch job writes;
`output_row` builds one row of it from what was asked (id, uri, task, prompt,
model, reduction) and what came back (an engine `Result`, or an error message).
`/v1/caption` and `/v1/vqa` return the same rows as JSON: `finished_at` is a
timezone-aware datetime (UTC, millisecond precision, as Parquet stores it) that
the HTTP layer's JSON encoder writes as an ISO 8601 string.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from restore.config import ReductionConfig
    from restore.request import Result

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
        pa.field("worker", pa.string()),  # host:pid of the actor or replica
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def now() -> dt.datetime:
    """The current UTC time at the precision OUTPUT_SCHEMA stores (milliseconds)."""
    t = dt.datetime.now(dt.UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def output_row(
    id: str,
    uri: str,
    task: str,
    prompt: str | None,
    model: str,
    reduction: ReductionConfig,
    result: Result | str,
    worker: str,
    finished_at: dt.datetime | None = None,
) -> dict:
    """One OUTPUT_SCHEMA row: `result` is the request's engine `Result`, or the error message (names the uri).

    `reduction` is the one the request ran with (method, budget, and whether
    RESTORE was in effect: requested and the method reduces).
    """
    error = result if isinstance(result, str) else None
    budget = reduction.budget
    row = {
        "id": id, "uri": uri, "task": task, "prompt": prompt, "answer": None, "model": model,
        "method": reduction.method, "budget": float(budget) if budget is not None else None,
        "restore": bool(reduction.restore.enabled and reduction.reduces),
        "visual_tokens": None, "kept_tokens": None, "prompt_tokens": None, "prefill_ms": None,
        "full_prefill_ms_est": None, "decode_ms": None, "generated_tokens": None,
        "status": "error" if error else "ok", "error": error, "worker": worker,
        "finished_at": finished_at or now(),
    }
    if error is None:
        s = result.stats
        row.update(
            answer=result.text, visual_tokens=s.visual_tokens, kept_tokens=s.kept_tokens,
            prompt_tokens=s.prompt_tokens, prefill_ms=s.prefill_ms, full_prefill_ms_est=s.full_prefill_ms_est,
            decode_ms=s.decode_ms, generated_tokens=s.generated_tokens,
        )
    return row
