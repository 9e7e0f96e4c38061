"""Built-in environments, looked up by the name a run config gives."""
from __future__ import annotations

from typing import Any

from .arithmetic import Arithmetic
from .base import Environment, Task

ENVIRONMENTS: dict[str, type[Environment]] = {"arithmetic": Arithmetic}


def make_environment(name: str, params: dict[str, Any] | None = None) -> Environment:
    try:
        cls = ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; built-in: {sorted(ENVIRONMENTS)}") from None
    return cls(**(params or {}))


__all__ = ["Environment", "Task", "Arithmetic", "ENVIRONMENTS", "make_environment"]
