"""Built-in models that ship with potluck, so nothing is downloaded for a demo or a test."""
from __future__ import annotations

from pathlib import Path

BUILTIN = {"potluck/tiny-arith": Path(__file__).resolve().parent / "tiny-arith"}


def resolve_model(name: str) -> str:
    """A built-in model's directory; any other name (HF id or path) is passed through."""
    return str(BUILTIN.get(name, name))
