"""`pipelines.serve.batcher`: one continuous-batching scheduler per replica (short requests are not held by long
ones, cancels and timeouts free the slot, the queue limit sheds load), the static mode kept for benchmarks, and
the measurements autoscaling reads."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from PIL import Image

from pipelines.serve.batcher import Calibration, Overloaded, RequestTimeout, Service
from pipelines.serve.settings import ServeSettings
from restore import ReductionConfig, Request
from restore.config import GenerationConfig
from tests.helpers.images import png_b64
from tests.pipelines.serve.conftest import SETTINGS


def image_request(i: int = 0, **kw) -> Request:
    return Request("<image> what ?", [base64.b64decode(png_b64(i))], **kw)


def test_concurrent_requests_run_together_with_their_own_settings(service):
    requests = [image_request(i, reduction=ReductionConfig(method="pool", budget=2 + i)) for i in range(3)]

    async def go():
        return await asyncio.gather(*(service.submit(r, GenerationConfig(max_new_tokens=2)) for r in requests))

    results = asyncio.run(go())
    assert [r.stats.kept_tokens for r in results] == [2, 3, 4]
    stats = service.autoscaling_stats()
    assert stats["arrival_rate"] > 0 and stats["service_rate"] > 0 and stats["speedup"] == pytest.approx(1.0)
    assert stats["running"] == 0 and stats["waiting"] == 0 and stats["cache_tokens_in_use"] == 0


def test_short_request_is_not_held_by_a_long_one_and_streams_deltas(service):
    async def go():
        long = await service.open(image_request(), GenerationConfig(max_new_tokens=300))
        deltas: list[str] = []
        short = await service.open(Request("hello", []), GenerationConfig(max_new_tokens=3), on_delta=deltas.append)
        out = await service.wait(short)
        running_long = not long.handle.done()
        await asyncio.sleep(0)  # deltas posted to the loop
        return out, running_long, deltas, await service.wait(long)

    short, running_long, deltas, long = asyncio.run(go())
    assert running_long and long.stats.generated_tokens > short.stats.generated_tokens
    assert "".join(deltas).strip() == short.text


def test_timeout_and_cancel_free_the_slot(service):
    async def go():
        job = await service.open(image_request(), GenerationConfig(max_new_tokens=1000))
        with pytest.raises(RequestTimeout, match="limit of 0.05 s"):
            await service.wait(job, timeout=0.05)
        waited = time.monotonic()
        while service.running and time.monotonic() - waited < 5:
            await asyncio.sleep(0.01)
        assert service.running == 0 and service.scheduler.tokens_in_use == 0
        job = await service.open(image_request(), GenerationConfig(max_new_tokens=1000))
        task = asyncio.ensure_future(service.wait(job))
        await asyncio.sleep(0.05)
        task.cancel()  # what a client disconnect does
        with pytest.raises(asyncio.CancelledError):
            await task
        waited = time.monotonic()
        while service.running and time.monotonic() - waited < 5:
            await asyncio.sleep(0.01)
        assert service.running == 0

    asyncio.run(go())


def test_full_queue_is_refused_with_a_retry_after(service):
    limit = service.settings.max_waiting
    service.settings.max_waiting = 0
    try:
        with pytest.raises(Overloaded) as err:
            asyncio.run(service.submit(Request("hello", []), GenerationConfig(max_new_tokens=1)))
    finally:
        service.settings.max_waiting = limit
    assert err.value.retry_after_s >= 1


def test_engine_refusals_raise_before_anything_runs(service):
    with pytest.raises(ValueError, match="empty"):
        asyncio.run(service.open(Request("", []), GenerationConfig(max_new_tokens=1)))


def test_static_mode_batches_requests_that_arrive_together():
    static = Service.load(ServeSettings(**SETTINGS, batching="static", calibrate=False))
    try:
        async def go():
            return await asyncio.gather(*(static.submit(image_request(i), GenerationConfig(max_new_tokens=2))
                                          for i in range(3)))

        results = asyncio.run(go())
    finally:
        static.close()
    assert {r.stats.batch_size for r in results} == {3}


def test_calibration_prices_the_missing_tokens(service):
    cal = service.calibrate(runs=1)
    assert cal.full_tokens - cal.reduced_tokens == 36 - 8 and cal.full_request_ms > 0 and cal.ms_per_token >= 0
    service.calibration = Calibration(ms_per_token=0.5, full_request_ms=20.0, full_tokens=40, reduced_tokens=12)
    service._served.clear()
    try:
        asyncio.run(service.submit(Request("<image> what ?", [Image.new("RGB", (24, 24), (200, 30, 30))]),
                                   GenerationConfig(max_new_tokens=1)))
        served = service._served[-1]
        wall = served.end - served.start
        stats = service.autoscaling_stats()
    finally:
        service.calibration = None
    assert stats["speedup"] == pytest.approx((wall + 0.5 * (36 - 8) / 1e3) / wall)
    assert stats["full_rate"] == pytest.approx(1 / (wall + 0.5 * (36 - 8) / 1e3))
    # A reduced request reserves fewer cache tokens than it would with every visual token.
    assert served.cost < served.full_cost and stats["concurrency_gain"] >= 1.0
