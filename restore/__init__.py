"""restore: visual token reduction with RESTORE's rectifications for multimodal LLMs."""

from restore.config import GenerationConfig, ModelConfig, ReductionConfig, RestoreConfig
from restore.engine import Engine
from restore.request import Request, Result

__all__ = [
    "Engine",
    "GenerationConfig",
    "ModelConfig",
    "ReductionConfig",
    "Request",
    "RestoreConfig",
    "Result",
]
