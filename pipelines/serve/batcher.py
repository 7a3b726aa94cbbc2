"""One replica's model service: an `Engine`, a dynamic batcher, and the measurements autoscaling uses.

Free of Ray so it runs (and is tested) in-process; `pipelines.serve.app` puts
it behind FastAPI, `pipelines.serve.deployment` on Ray Serve. Requests arriving
within `batch_wait_ms` of each other share one `Engine.generate` call (up to
`max_batch_size`, per-request reduction settings inside the batch; requests
with different sampling settings run as separate sub-batches). The engine runs on one worker thread, so the event
loop keeps accepting and streaming while a batch computes.

Measurements (see `pipelines.serve.autoscaling` for how they are used):
- at start-up, two timed prefills of a generated image, with every visual token
  and with the deployment's reduction, calibrate this replica's prefill cost
  per token (`ms_per_token`) and its full-token request rate;
- per served batch, the wall time W actually spent and the modelled extra
  time the same requests would have cost with every visual token,
  `ms_per_token × (full − kept tokens)`; the window's speedup is
  Σ(W + extra) / ΣW.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.serve.settings import ServeSettings
from restore.config import GenerationConfig, ReductionConfig
from restore.prompts import DEFAULT_CAPTION_PROMPTS

logger = logging.getLogger(__name__)


@dataclass
class _Work:
    request: Any
    generation: GenerationConfig
    future: asyncio.Future
    on_token: Any = None


@dataclass
class _Batch:
    at: float
    requests: int
    wall_s: float
    extra_full_s: float


@dataclass
class Calibration:
    ms_per_token: float
    full_request_ms: float
    full_tokens: int
    reduced_tokens: int

    @property
    def full_rate(self) -> float:
        return 1000.0 / self.full_request_ms if self.full_request_ms > 0 else 0.0


@dataclass
class Service:
    settings: ServeSettings
    engine: Any = None
    calibration: Calibration | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _queue: asyncio.Queue | None = None
    _worker: asyncio.Task | None = None
    _pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
    )
    _arrivals: collections.deque = field(default_factory=collections.deque)
    _batches: collections.deque = field(default_factory=collections.deque)
    _in_flight: int = 0

    @classmethod
    def load(cls, settings: ServeSettings) -> Service:
        from restore import Engine

        model = settings.model_spec()
        engine = Engine.from_pretrained(model.path, reduction=settings.reduction, device=model.resolved_device(),
                                        dtype=model.dtype)
        service = cls(settings=settings, engine=engine)
        if settings.calibrate:
            service.calibration = service.calibrate()
        return service

    # ------------------------------------------------------------------ calibration

    def calibrate(self, runs: int = 3) -> Calibration:
        """Median prefill and request times of one generated image, full vs the default reduction."""
        from restore import Request
        from restore.zoo import world

        image = world.render(world.random_scene(random.Random("restore-serve-calibration")))
        full = ReductionConfig(method="none")
        reduced = self.settings.reduction if self.settings.reduction.reduces else ReductionConfig(method="pool",
                                                                                               budget=0.25)

        def timed(reduction):
            out = []
            for _ in range(runs + 1):  # the first run warms up
                t0 = time.perf_counter()
                prompt = self.engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1)
                r = self.engine.generate([Request(prompt, [image], reduction=reduction)],
                                         max_new_tokens=8)[0]
                out.append(((time.perf_counter() - t0) * 1e3, r.stats))
            return out[1:]

        f, r = timed(full), timed(reduced)
        f_ms = statistics.median(s.prefill_ms for _, s in f)
        r_ms = statistics.median(s.prefill_ms for _, s in r)
        f_tok, r_tok = f[0][1].prompt_tokens, r[0][1].prompt_tokens
        slope = max(0.0, (f_ms - r_ms) / (f_tok - r_tok)) if f_tok > r_tok else 0.0
        cal = Calibration(slope, statistics.median(ms for ms, _ in f), f_tok, r_tok)
        logger.info("calibration: %.4f ms per prefill token, full-token request %.1f ms", slope, cal.full_request_ms)
        return cal

    # ------------------------------------------------------------------ batching

    async def submit(self, request, generation: GenerationConfig, on_token=None):
        """The `Result` of one request, computed in a batch with whatever else arrives meanwhile."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a queue belongs to one event loop (test clients may start several)
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        self._arrivals.append(time.monotonic())
        work = _Work(request, generation, loop.create_future(), on_token)
        self._in_flight += 1
        await self._queue.put(work)
        try:
            return await asyncio.shield(work.future)  # an impatient client does not cancel its batch-mates
        finally:
            self._in_flight -= 1

    async def _run(self) -> None:
        s = self.settings
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + s.batch_wait_ms / 1e3
            while len(batch) < s.max_batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            groups: dict[str, list[_Work]] = {}
            for w in batch:
                groups.setdefault(w.generation.model_dump_json(), []).append(w)
            for works in groups.values():
                await self._generate(works)

    async def _generate(self, works: list[_Work]) -> None:
        loop = asyncio.get_running_loop()

        def on_token(i: int, token: int) -> None:
            cb = works[i].on_token
            if cb is not None:
                loop.call_soon_threadsafe(cb, token)

        def call():
            t0 = time.perf_counter()
            results = self.engine.generate([w.request for w in works], generation=works[0].generation,
                                           on_token=on_token)
            return results, time.perf_counter() - t0

        try:
            results, wall = await loop.run_in_executor(self._pool, call)
        except Exception as err:  # a bad request must not fail its batch-mates: rerun them one by one
            if len(works) > 1:
                for w in works:
                    await self._generate([w])
                return
            if not works[0].future.done():
                works[0].future.set_exception(err)
            return
        self._record(results, wall)
        for w, r in zip(works, results, strict=True):
            if not w.future.done():
                w.future.set_result(r)

    # ------------------------------------------------------------------ measurements

    def _record(self, results, wall_s: float) -> None:
        slope = self.calibration.ms_per_token if self.calibration else 0.0
        missing = sum(r.stats.visual_tokens - r.stats.kept_tokens for r in results)
        self._batches.append(_Batch(time.monotonic(), len(results), wall_s, slope * missing / 1e3))

    def _trim(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()
        while self._batches and self._batches[0].at < horizon:
            self._batches.popleft()

    def autoscaling_stats(self) -> dict[str, float]:
        """Arrival rate, full-token request rate and measured speedup over the window (serve.autoscaling)."""
        now = time.monotonic()
        self._trim(now)
        window = self.settings.window_s
        busy = sum(b.wall_s for b in self._batches)
        full = busy + sum(b.extra_full_s for b in self._batches)
        served = sum(b.requests for b in self._batches)
        if busy > 0 and served:
            speedup, full_rate = full / busy, served / full
        else:
            speedup = 1.0
            full_rate = self.calibration.full_rate if self.calibration else 0.0
        return {
            "arrival_rate": len(self._arrivals) / window,
            "full_rate": full_rate,
            "speedup": speedup,
            "service_rate": served / busy if busy > 0 else 0.0,
            "in_flight": float(self._in_flight),
        }
