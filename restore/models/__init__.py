"""Model adapters, one per family, chosen by the loaded model's class."""

from __future__ import annotations

from restore.models.base import Adapter
from restore.models.llava import LlavaAdapter
from restore.models.llava_onevision import LlavaOnevisionAdapter
from restore.models.qwen2_5_vl import Qwen2_5_VLAdapter

ADAPTERS: list[type[Adapter]] = [LlavaAdapter, Qwen2_5_VLAdapter, LlavaOnevisionAdapter]


def adapter_for(model, processor) -> Adapter:
    cls_name = type(model).__name__
    for adapter in ADAPTERS:
        if cls_name in adapter.model_classes:
            return adapter(model, processor)
    known = ", ".join(c for a in ADAPTERS for c in a.model_classes)
    raise ValueError(f"no adapter for model class {cls_name}; supported: {known}")


__all__ = ["ADAPTERS", "Adapter", "adapter_for"]
