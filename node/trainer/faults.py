"""TEST HOOK, not a feature: POTLUCK_TEST_FAULT makes this trainer misbehave as an adversary or a
failing machine would, so tests can check with real processes that the swarm copes.

    POTLUCK_TEST_FAULT=MODE[@VERSION]   from parent version VERSION on (default 0), MODE is one of
      scale100 | random | signflip   its pseudo-gradient is poisoned, both in the all-reduce and
                                     as submitted to the coordinator;
      candidate                      an honest all-reduce, then a tampered candidate version;
      crash                          the process dies after its inner steps, before the all-reduce;
      hang                           right after the all-reduce the trainer stops: it never submits,
                                     but stays online (heartbeats go on) until it is killed.

It is read here and nowhere else; unset, it does nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os

import torch

from protocol.diloco import Tensors

log = logging.getLogger("potluck.node")
ENV = "POTLUCK_TEST_FAULT"
POISONS = ("scale100", "random", "signflip")


def fault_mode(parent_version: int) -> str:
    mode, _, start = os.environ.get(ENV, "").partition("@")
    if not mode or parent_version < int(start or 0):
        return ""
    log.warning("TEST HOOK %s=%s on version %d", ENV, mode, parent_version)
    if mode == "crash":
        die()
    return mode


def die() -> None:
    """As a kill -9 would: no cleanup, no goodbye to the coordinator or the round-mates."""
    logging.shutdown()
    os._exit(1)


async def hang() -> None:
    await asyncio.Event().wait()


def poison(tensors: Tensors, mode: str) -> Tensors:
    generator = torch.Generator().manual_seed(0)
    if mode == "scale100":
        return {k: v * 100 for k, v in tensors.items()}
    if mode == "signflip":
        return {k: -v for k, v in tensors.items()}
    if mode in ("random", "candidate"):
        return {k: v + torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
    raise ValueError(f"unknown {ENV} mode {mode!r}")
