"""restore: visual token reduction with RESTORE's rectifications for multimodal LLMs.

The names below load on first use (PEP 562), so that `import restore.config`, which Ray
Data's CPU decode workers need to unpickle a job, does not pull in torch and transformers
(3 s of imports per worker process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from restore.config import GenerationConfig, ModelConfig, ReductionConfig, RestoreConfig
    from restore.engine import Engine
    from restore.request import Request, Result
    from restore.runtime.scheduler import Scheduler

_HOME = {
    "Engine": "restore.engine",
    "GenerationConfig": "restore.config",
    "ModelConfig": "restore.config",
    "ReductionConfig": "restore.config",
    "Request": "restore.request",
    "RestoreConfig": "restore.config",
    "Result": "restore.request",
    "Scheduler": "restore.runtime.scheduler",
}

__all__ = [
    "Engine",
    "GenerationConfig",
    "ModelConfig",
    "ReductionConfig",
    "Request",
    "RestoreConfig",
    "Result",
    "Scheduler",
]


def __getattr__(name: str):
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'restore' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
