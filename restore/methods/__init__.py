"""Registry of base VTR methods: one module per method, registered by name."""

from __future__ import annotations

from restore.methods.base import Method
from restore.tokens import ImageTokens

_REGISTRY: dict[str, Method] = {}


def register(method_cls: type[Method]) -> type[Method]:
    name = method_cls.name
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    _REGISTRY[name] = method_cls()
    return method_cls


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown method {name!r}; registered methods: {known}") from None


def available() -> list[Method]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


# Importing the modules registers them.
from restore.methods import (  # noqa: E402,F401
    cdpruner,
    dart,
    divprune,
    fastv,
    holov,
    none,
    pool,
    prumerge,
    prunesid,
    pyramiddrop,
    random,
    sparsevlm,
    temporal,
    tome,
    visionzip,
    vispruner,
)

__all__ = ["ImageTokens", "Method", "available", "get_method", "register"]
