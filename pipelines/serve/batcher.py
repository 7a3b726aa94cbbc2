"""One replica's model service: an `Engine`, its continuous-batching scheduler, and the measurements autoscaling uses.

Free of Ray so it runs (and is tested) in-process; `pipelines.serve.app` puts
it behind FastAPI, `pipelines.serve.deployment` on Ray Serve.

Batching (`ServeSettings.batching`):
- `continuous` (default): one long-lived `restore.runtime.scheduler.Scheduler`
  per replica, driven by its own thread. Requests join the running batch at the
  next decode step and leave it when done, so a short request is not held by a
  long one; admission counts KV-cache tokens (`max_batch_tokens`, a reduced
  request costs its reduced size) and `max_running`. Tokens stream as they are
  chosen (the scheduler's text deltas); a request whose client goes away or
  whose `request_timeout_s` runs out is cancelled and leaves the batch at the
  next step, freeing its slot.
- `static`: kept for the side-by-side benchmark (`pipelines.bench.serve_load`):
  requests arriving within `batch_wait_ms` (up to `max_batch_size`) form a
  batch that runs to completion before the next one starts.

`open()` validates and queues a request (a bad one raises ValueError before
any response is started), `wait()` awaits its result with the timeout.

Measurements (see `pipelines.serve.autoscaling` for how they are used):
- at start-up, two timed prefills of a generated image, with every visual token
  and with the deployment's reduction, calibrate this replica's prefill cost
  per token (`ms_per_token`) and its full-token request rate;
- per served request, its time in the replica and the modelled extra prefill
  time it would have cost with every visual token; busy time is the union of
  the requests' intervals; the service rate is requests per busy second, the
  speedup Σ(busy + extra) / busy;
- the cache: a request's cost (its reduced KV tokens + max_tokens) against
  `max_batch_tokens` says how many requests fit at once; `capacity` is the
  service rate scaled from the measured mean running count to those slots,
  which is where the extra concurrency reduction buys shows up.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.serve.metrics import Metrics
from pipelines.serve.settings import ServeSettings
from restore.config import GenerationConfig, ReductionConfig
from restore.prompts import DEFAULT_CAPTION_PROMPTS
from restore.runtime.scheduler import Scheduler

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The replica's queue is full: answer 429 with `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(Exception):
    """The request ran past `request_timeout_s`; it was cancelled and its slot freed."""


@dataclass
class _Served:
    start: float
    end: float
    extra_full_s: float
    running_s: float  # time it spent in the running batch
    cost: int  # cache tokens it reserved
    full_cost: int  # cache tokens it would have reserved with every visual token


@dataclass
class Calibration:
    ms_per_token: float
    full_request_ms: float
    full_tokens: int
    reduced_tokens: int

    @property
    def full_rate(self) -> float:
        return 1000.0 / self.full_request_ms if self.full_request_ms > 0 else 0.0


def _settle(fut: asyncio.Future, handle) -> None:
    """On the event loop: the handle's result or error into `fut` (unless its waiter already gave up)."""
    if fut.done():
        return
    try:
        fut.set_result(handle.result())
    except Exception as err:  # the request's own failure, handed to its waiter
        fut.set_exception(err)


@dataclass
class Job:
    """One queued request: the scheduler's handle (continuous) or the static batcher's future."""

    generation: GenerationConfig
    started: float
    handle: Any = None
    future: asyncio.Future | None = None
    request: Any = None
    on_delta: Any = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        elif self.future is not None and not self.future.done():
            self.future.cancel()


@dataclass
class _StaticWork:
    job: Job
    loop: asyncio.AbstractEventLoop


@dataclass
class Service:
    settings: ServeSettings
    engine: Any = None
    calibration: Calibration | None = None
    scheduler: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    _pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
    )
    _arrivals: collections.deque = field(default_factory=collections.deque)
    _served: collections.deque = field(default_factory=collections.deque)
    _in_flight: int = 0
    # static batching
    _loop: asyncio.AbstractEventLoop | None = None
    _queue: asyncio.Queue | None = None
    _worker: asyncio.Task | None = None
    _static_running: int = 0

    @classmethod
    def load(cls, settings: ServeSettings) -> Service:
        from restore import Engine

        model = settings.model_spec()
        engine = Engine.from_pretrained(model.path, reduction=settings.reduction, device=model.resolved_device(),
                                        dtype=model.dtype)
        service = cls(settings=settings, engine=engine)
        if settings.calibrate:
            service.calibration = service.calibrate()
        service.start()
        return service

    def start(self) -> None:
        """Start the replica's scheduler thread (continuous batching; nothing to do for static)."""
        if self.settings.batching == "continuous" and self.scheduler is None and self.engine is not None:
            s = self.settings
            self.scheduler = Scheduler(self.engine, max_batch_tokens=s.max_batch_tokens, max_running=s.max_running,
                                       prefill_group=s.prefill_group)
            self.scheduler.start()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

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

    # ------------------------------------------------------------------ requests

    @property
    def running(self) -> int:
        return self.scheduler.running if self.scheduler is not None else self._static_running

    @property
    def waiting(self) -> int:
        if self.scheduler is not None:
            return self.scheduler.waiting
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after_s(self) -> float:
        """Seconds the queue ahead needs to drain at the measured service rate, with ±25 % jitter (at least 1)."""
        rate = self._rates()["service_rate"]
        drain = (self.waiting + 1) / rate if rate > 0 else 2.0
        return max(1.0, drain * random.uniform(0.75, 1.25))

    async def open(self, request, generation: GenerationConfig, on_delta=None) -> Job:
        """Validate and queue one request; `on_delta(text)` is called on the event loop with each text delta.

        Raises ValueError for a request the engine refuses (empty, invalid Unicode, over the context, a plan
        the model cannot run) and `Overloaded` when the queue is full, before anything is sent to the client.
        """
        if self.waiting >= self.settings.max_waiting:
            raise Overloaded(f"this replica already queues {self.waiting} requests; retry later", self.retry_after_s())
        loop = asyncio.get_running_loop()
        job = Job(generation, time.monotonic(), on_delta=on_delta)
        self._arrivals.append(job.started)
        if self.settings.batching == "static":
            job.request, job.future = request, loop.create_future()
            self._start_static(loop)
            await self._queue.put(_StaticWork(job, loop))
            return job
        self.start()
        cb = None
        if on_delta is not None:
            def cb(_token: int, text: str) -> None:
                if text:
                    loop.call_soon_threadsafe(on_delta, text)
        job.handle = await loop.run_in_executor(None, lambda: self.scheduler.submit(
            request, generation, cb, max_prompt_tokens=self.settings.max_prompt_tokens))
        return job

    async def wait(self, job: Job, timeout: float | None = None):
        """The job's `Result`; on timeout (`RequestTimeout`) or cancellation of the caller, the job is
        cancelled: it leaves the running batch at the scheduler's next step."""
        timeout = self.settings.request_timeout_s if timeout is None else timeout
        left = max(0.001, timeout - (time.monotonic() - job.started))
        loop = asyncio.get_running_loop()
        if job.handle is not None:
            # The scheduler's thread hands the finished result to this loop: no thread blocks per waiting request.
            fut = loop.create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, so nothing logs it
            job.handle.add_done_callback(lambda h: loop.call_soon_threadsafe(_settle, fut, h))
        else:
            fut = job.future
        self._in_flight += 1
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), left)
        except TimeoutError:
            job.cancel()
            raise RequestTimeout(f"the request ran past this server's limit of {timeout:g} s and was cancelled") \
                from None
        except asyncio.CancelledError:  # the client went away
            job.cancel()
            raise
        finally:
            self._in_flight -= 1
        self._record(job, result)
        return result

    async def submit(self, request, generation: GenerationConfig, on_delta=None, timeout: float | None = None):
        """`open` then `wait`: the `Result` of one request."""
        return await self.wait(await self.open(request, generation, on_delta), timeout)

    # ------------------------------------------------------------------ static batching (benchmarks)

    def _start_static(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:  # a queue belongs to one event loop (test clients may start several)
            self._loop, self._queue, self._worker = loop, asyncio.Queue(), None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run_static())

    async def _run_static(self) -> None:
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
            works = [w for w in batch if not w.job.future.done()]  # not cancelled while queued
            if works:
                await self._generate_static(works)

    async def _generate_static(self, works: list[_StaticWork]) -> None:
        """One batch run to completion on a fresh scheduler: nothing joins it once it started (static
        batching), each request with its own sampling settings and max_tokens."""
        loop = asyncio.get_running_loop()

        def stream(job: Job):
            if job.on_delta is None:
                return None
            return lambda _token, text: text and loop.call_soon_threadsafe(job.on_delta, text)

        def call():
            scheduler = Scheduler(self.engine, prefill_group=len(works))
            handles = []
            for w in works:
                try:
                    handles.append(scheduler.submit(w.job.request, w.job.generation, stream(w.job),
                                                    max_prompt_tokens=self.settings.max_prompt_tokens))
                except Exception as err:  # a refused request fails alone
                    handles.append(err)
            scheduler.run_until_idle()
            out = []
            for h in handles:
                try:
                    out.append(h if isinstance(h, Exception) else h.result())
                except Exception as err:
                    out.append(err)
            return out

        self._static_running = len(works)
        try:
            results = await loop.run_in_executor(self._pool, call)
        except Exception as err:  # never leave a caller without an answer
            results = [err] * len(works)
        finally:
            self._static_running = 0
        for w, r in zip(works, results, strict=True):
            if w.job.future.done():
                continue
            if isinstance(r, Exception):
                w.job.future.set_exception(r)
            else:
                w.job.future.set_result(r)

    # ------------------------------------------------------------------ measurements

    def _record(self, job: Job, result) -> None:
        st = result.stats
        slope = self.calibration.ms_per_token if self.calibration else 0.0
        missing = max(0, st.visual_tokens - st.kept_tokens)
        cached = math.ceil(sum(st.layer_tokens) / len(st.layer_tokens)) if st.layer_tokens else st.prompt_tokens
        new = job.generation.max_new_tokens
        full_prompt = st.prompt_tokens + missing
        end = time.monotonic()
        self._served.append(_Served(job.started, end, slope * missing / 1e3, st.decode_ms / 1e3,
                                    cached + new, full_prompt + new))
        # Time before joining the batch: the request's time here less its decode, encode, reduce and prefill.
        joined = (end - job.started) - st.decode_ms / 1e3
        first = joined + (st.decode_ms / 1e3 / st.generated_tokens if st.generated_tokens else 0.0)
        self.metrics.served(st, joined - (st.encode_ms + st.reduce_ms + st.prefill_ms) / 1e3, first)

    def _trim(self, now: float) -> None:
        horizon = now - self.settings.window_s
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()
        while self._served and self._served[0].end < horizon:
            self._served.popleft()

    def _busy_s(self) -> float:
        """Union of the served requests' intervals: the time this replica had work."""
        total, end = 0.0, -math.inf
        for s in sorted(self._served, key=lambda s: s.start):
            if s.end <= end:
                continue
            total += s.end - max(s.start, end)
            end = s.end
        return total

    def _rates(self) -> dict[str, float]:
        now = time.monotonic()
        self._trim(now)
        busy = self._busy_s()
        served = len(self._served)
        return {"busy": busy, "served": served, "service_rate": served / busy if busy > 0 else 0.0}

    def autoscaling_stats(self) -> dict[str, float]:
        """Arrival and service rates, full-token rate, speedup, capacity and cache use (serve.autoscaling)."""
        rates = self._rates()
        busy, served, service_rate = rates["busy"], rates["served"], rates["service_rate"]
        s = self.settings
        full = busy + sum(x.extra_full_s for x in self._served)
        if busy > 0 and served:
            speedup, full_rate = full / busy, served / full
        else:
            speedup = 1.0
            full_rate = self.calibration.full_rate if self.calibration else 0.0
        # Requests that fit at once: by the cache budget at this traffic's mean cost, and by max_running.
        running_slots = s.max_running if s.batching == "continuous" else s.max_batch_size
        cost = statistics.mean(x.cost for x in self._served) if served else 0.0
        full_cost = statistics.mean(x.full_cost for x in self._served) if served else 0.0
        slots = min(running_slots, s.max_batch_tokens / cost) if cost else float(running_slots)
        full_slots = min(running_slots, s.max_batch_tokens / full_cost) if full_cost else float(running_slots)
        mean_running = sum(x.running_s for x in self._served) / busy if busy > 0 else 0.0
        capacity = service_rate * max(1.0, slots / mean_running) if mean_running > 0 else service_rate
        in_use = self.scheduler.tokens_in_use if self.scheduler is not None else 0
        self.metrics.load(self.running, self.waiting, in_use, s.max_batch_tokens, speedup)
        return {
            "arrival_rate": len(self._arrivals) / s.window_s,
            "full_rate": full_rate,
            "speedup": speedup,
            "service_rate": service_rate,
            "capacity": capacity,
            "concurrency_gain": slots / full_slots if full_slots else 1.0,
            "in_flight": float(self._in_flight),
            "running": float(self.running),
            "waiting": float(self.waiting),
            "cache_tokens_in_use": float(in_use),
            "cache_use": in_use / s.max_batch_tokens,
        }
