"""A node's reputation: how far its verified record says it can be trusted, from 0 to 1.

A Beta(1, 1) prior over "this node's next submission is honest", where a caught failure weighs as
much as FAILURE_WEIGHT passed checks: trust is slow to earn and quick to lose. A quarantined node
has none.
"""
from __future__ import annotations

FAILURE_WEIGHT = 10


def reputation(verified_ok: int, verified_failed: int, quarantined: bool) -> float:
    if quarantined:
        return 0.0
    return (verified_ok + 1) / (verified_ok + 2 + FAILURE_WEIGHT * verified_failed)
