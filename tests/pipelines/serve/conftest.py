"""The in-process service the app and batcher tests share (a tiny random model, no Ray)."""

from __future__ import annotations

import pytest

from pipelines.serve.batcher import Service
from pipelines.serve.settings import ServeSettings

SETTINGS = dict(model="random:llava-tiny", reduction={"method": "divprune", "budget": 8}, max_tokens=16, default_max_tokens=4,
                max_images=2, batch_wait_ms=50)


@pytest.fixture(scope="module")
def service():
    s = Service.load(ServeSettings(**SETTINGS, calibrate=False))
    yield s
    s.close()
