"""`LabelPredictor`: the inference actor of the Ray Data graph (one `restore.Engine` per actor).

It receives rows already decoded by the CPU stage (`pipelines.batch.decode`), so
no image or video decoder runs on the GPU actor (DESIGN §7); rows that arrive
undecoded (a direct call) are decoded here. Every input row gives exactly one
output row (`pipelines.rows`), errors included.

Continuous batching: the actor owns one `restore.runtime.scheduler.Scheduler`,
driven by its own thread and capped at `batch_size` running rows. Ray Data
hands the actor `CALLS_PER_ACTOR` batches at once (`ActorPoolStrategy` with
true multi-threading), each call submits its rows and waits for them, so when
an answer ends its slot is refilled at the next decode step by a row of the
same or the next batch instead of idling until the longest answer of a static
batch is done (`python -m restore.bench.batching`: 1.09-1.10x on the default
model, docs/benchmarks.md).

Poison inputs, in the worker:

- A row the scheduler refuses or fails (the prefill of a group fails all its
  members) is run again alone; if it fails alone it becomes an error row
  naming its uri and the cause, its batch-mates are labeled.
- A batch that kills the process (a segfault, an OOM kill) cannot be caught.
  The actor runs with bounded task retries (`max_task_retries`; Ray restarts
  the actor and resends the batch) and keeps a *crash journal* in shared
  storage, `<output>/_restore/journal/<actor id>.json` (the actor id survives
  restarts): before a batch it records the batch's ids as in flight, after it
  clears them (concurrent calls add and remove their own ids). A restarted
  actor that finds ids in flight when its predecessor died runs them one at a
  time with nothing else in flight (recording each alone); an id that was in
  flight alone when the process died `POISON_AFTER` times becomes an error row
  without running again.
- `RESTORE_TEST_CRASH_ON_ID` (test-only): an id on which the actor calls
  `os._exit(1)` just before generating, to exercise the journal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from pipelines.batch.config import LabelJob
from pipelines.batch.decode import decode_row, media_of
from pipelines.rows import OUTPUT_SCHEMA, output_row
from restore.config import GenerationConfig, ModelConfig

logger = logging.getLogger(__name__)

POISON_AFTER = 2  # deaths with the id alone in flight before it is an error row
CALLS_PER_ACTOR = 2  # batches in one actor at once: one decoding, one ready to refill its finished slots
CRASH_ENV = "RESTORE_TEST_CRASH_ON_ID"  # test-only: os._exit(1) just before generating this id


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
        self.generation = GenerationConfig(max_new_tokens=self.job.max_new_tokens)
        self.scheduler = self.engine.scheduler(max_running=self.job.batch_size, prefill_group=self.job.batch_size)
        self.scheduler.start()
        self.gate = _Gate()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.journal = CrashJournal.for_actor(self.job)
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
            if row["prompt"] is None and row.get("error") is None:
                row["error"] = f"{row['uri']}: task vqa needs a question and this row has none"
        answers: dict[str, Any] = {}
        ok = []
        for r in rows:
            if r.get("error") is not None:
                continue
            deaths = self.journal.deaths(r["id"])
            if deaths >= POISON_AFTER:
                answers[r["id"]] = (f"{r['uri']}: the inference process died {deaths} times running this input alone "
                                    "(a crash, or killed for memory); not retried")
            else:
                ok.append(r)
        if ok and self.journal.suspects(r["id"] for r in ok):
            with self.gate.exclusive():  # a predecessor died with some of these in flight: find the culprit alone
                for r in ok:
                    answers.update(self._run([r], self._alone))
        elif ok:
            with self.gate.shared():
                answers.update(self._run(ok, self._generate))
        return pa.Table.from_pylist([self._output(r, answers.get(r["id"])) for r in rows], schema=OUTPUT_SCHEMA)

    def __del__(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.close()

    def _run(self, rows: list[dict], generate) -> dict[str, Any]:
        """`generate(rows)` with the rows recorded as in flight in the crash journal."""
        ids = [r["id"] for r in rows]
        self.journal.begin(ids)
        crash = os.environ.get(CRASH_ENV)
        if crash and crash in ids:
            os._exit(1)  # test-only hook (module docstring)
        out = generate(rows)
        self.journal.end(ids)
        return out

    def _generate(self, rows: list[dict]) -> dict[str, Any]:
        """id -> Result or error message: the rows join the actor's running batch; one that fails runs again
        alone, so a bad row fails by itself and its batch-mates are labeled."""
        out: dict[str, Any] = {}
        handles = {}
        for r in rows:
            try:
                handles[r["id"]] = self.scheduler.submit(self._request(r), self.generation)
            except Exception as err:  # refused before it ran (the prompt, the image): nothing to retry
                out[r["id"]] = _failure(r, err)
        for r in rows:
            handle = handles.get(r["id"])
            if handle is None:
                continue
            try:
                out[r["id"]] = handle.result()
            except Exception as err:
                logger.warning("%s failed in the running batch (%s); running it alone", r["uri"], err)
                out.update(self._alone([r]))
        return out

    def _alone(self, rows: list[dict]) -> dict[str, Any]:
        """Each row in a batch of its own (this thread, not the shared scheduler)."""
        out: dict[str, Any] = {}
        for r in rows:
            try:
                out[r["id"]] = self.engine.generate([self._request(r)], generation=self.generation)[0]
            except Exception as err:
                out[r["id"]] = _failure(r, err)
        return out

    def _output(self, row: dict, result: Any) -> dict:
        if row.get("error"):
            result = row["error"]
        elif result is None:
            result = f"{row['uri']}: no result"
        return output_row(row["id"], row["uri"], self.job.task, row["prompt"], self.job.model, self.reduction,
                          result, self.worker)


def _failure(row: dict, err: Exception) -> str:
    return f"{row['uri']}: generation failed: {type(err).__name__}: {err}"


class _Gate:
    """Concurrent calls share the actor (`shared`); a call isolating a crash suspect runs with nothing else in
    flight (`exclusive`), so a death while it runs is charged to its one row."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class CrashJournal:
    """Per-actor record, in shared storage, of the ids in flight and of deaths with one id alone in flight.

    File `<output>/_restore/journal/<actor id>.json`: {"inflight": [ids], "deaths": {id: n}, "suspects": [ids]}.
    Outside a Ray actor (a direct call) it only keeps memory.
    """

    def __init__(self, fs: Any = None, path: str | None = None) -> None:
        self.fs, self.path = fs, path
        self._lock = threading.Lock()  # the actor's concurrent calls share the file
        self.state: dict[str, Any] = {"inflight": [], "deaths": {}, "suspects": []}
        if fs is not None and fs.exists(path):
            try:
                self.state.update(json.loads(fs.cat_file(path)))
            except (ValueError, OSError) as err:
                logger.warning("crash journal %s unreadable (%s); starting afresh", path, err)
        died = self.state["inflight"]
        if died:  # the predecessor of this actor died with these in flight
            logger.warning("inference process died with %d row(s) in flight: %s", len(died), died[:8])
            if len(died) == 1:
                self.state["deaths"][died[0]] = self.state["deaths"].get(died[0], 0) + 1
            self.state["suspects"] = sorted(set(self.state["suspects"]) | set(died))
            self.state["inflight"] = []
            self._save()

    @classmethod
    def for_actor(cls, job: LabelJob) -> CrashJournal:
        try:
            import ray

            actor_id = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
        except Exception:  # not in Ray
            actor_id = None
        if not actor_id:
            return cls()
        from pipelines.batch.commit import JOURNAL_DIR
        from pipelines.media.storage import filesystem

        fs, root = filesystem(f"{job.output.rstrip('/')}/{JOURNAL_DIR}", job.endpoint_url, job.storage_options)
        fs.makedirs(root, exist_ok=True)
        return cls(fs, f"{root}/{actor_id}.json")

    def deaths(self, row_id: str) -> int:
        return int(self.state["deaths"].get(row_id, 0))

    def suspects(self, ids: Any) -> bool:
        return bool(set(self.state["suspects"]) & set(ids))

    def begin(self, ids: list[str]) -> None:
        with self._lock:
            self.state["inflight"] = self.state["inflight"] + [i for i in ids if i not in self.state["inflight"]]
            self._save()

    def end(self, ids: list[str]) -> None:
        with self._lock:
            gone = set(ids)
            self.state["inflight"] = [i for i in self.state["inflight"] if i not in gone]
            self._save()

    def _save(self) -> None:
        if self.fs is not None:
            self.fs.pipe_file(self.path, json.dumps(self.state).encode())
