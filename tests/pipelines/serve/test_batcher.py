"""`pipelines.serve.batcher`: requests that arrive together share a batch; the measurements autoscaling reads."""

from __future__ import annotations

import asyncio
import base64

import pytest
from PIL import Image

from pipelines.serve.batcher import Calibration
from restore import ReductionConfig, Request
from restore.config import GenerationConfig
from tests.helpers.images import png_b64


def test_concurrent_requests_share_a_batch_with_their_own_settings(service):
    requests = [Request("<image> what ?", [base64.b64decode(png_b64(i))],
                        reduction=ReductionConfig(method="pool", budget=2 + i)) for i in range(3)]

    async def go():
        return await asyncio.gather(*(service.submit(r, GenerationConfig(max_new_tokens=2)) for r in requests))

    results = asyncio.run(go())
    assert [r.stats.kept_tokens for r in results] == [2, 3, 4]
    assert {r.stats.batch_size for r in results} == {3}
    stats = service.autoscaling_stats()
    assert stats["arrival_rate"] > 0 and stats["service_rate"] > 0 and stats["speedup"] == pytest.approx(1.0)


def test_calibration_prices_the_missing_tokens(service):
    cal = service.calibrate(runs=1)
    assert cal.full_tokens - cal.reduced_tokens == 36 - 8 and cal.full_request_ms > 0 and cal.ms_per_token >= 0
    service.calibration = Calibration(ms_per_token=0.5, full_request_ms=20.0, full_tokens=40, reduced_tokens=12)
    service._batches.clear()
    try:
        asyncio.run(service.submit(Request("<image> what ?", [Image.new("RGB", (24, 24), (200, 30, 30))]),
                                   GenerationConfig(max_new_tokens=1)))
        wall = service._batches[-1].wall_s
        stats = service.autoscaling_stats()
    finally:
        service.calibration = None
    assert stats["speedup"] == pytest.approx((wall + 0.5 * (36 - 8) / 1e3) / wall)
    assert stats["full_rate"] == pytest.approx(1 / (wall + 0.5 * (36 - 8) / 1e3))
