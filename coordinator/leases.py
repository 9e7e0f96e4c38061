"""Lease rules, pure: how long a node gets for a piece of work, and whether work that arrives after
its lease expired is still worth taking.

Deadlines scale with the node's measured speed so that a fast node's vanished work goes back to
the pool soon, clamped to the run's bounds so a slow or lying figure can neither hold work for long
nor get a deadline too short to meet.
"""
from __future__ import annotations

SLACK = 8.0  # a deadline is this many times the expected time: room for load, version fetch, proofs


def expected_rate(reported_tokens_per_s: float, yardstick_tokens_per_s: float, yardstick_bytes: int,
                  model_bytes: int) -> float:
    """Generated tokens/s to expect from a node: what it reported from real work if it has, else its
    yardstick figure (the tiny model's forward passes) scaled by how much bigger the run's model is
    (compute per token grows with the weights). 0 when nothing is known."""
    if reported_tokens_per_s > 0:
        return reported_tokens_per_s
    if yardstick_tokens_per_s > 0 and yardstick_bytes > 0 and model_bytes > 0:
        return yardstick_tokens_per_s * min(1.0, yardstick_bytes / model_bytes)
    return 0.0


def scaled_seconds(work_tokens: int, tokens_per_s: float, min_s: float, max_s: float) -> float:
    """SLACK times the expected time for work_tokens, within [min_s, max_s]; max_s when the speed is
    unknown. min_s above max_s yields max_s (the run's lease_seconds is the hard bound)."""
    if tokens_per_s <= 0:
        return max_s
    return min(max_s, max(min_s, SLACK * work_tokens / tokens_per_s))


def late_refusal(kind: str, version: int, current_version: int, max_async_level: int, replaced: bool) -> str | None:
    """Why work submitted after its lease expired is of no use, or None to take it (it is then
    checked like any other). Rollouts must still be within the async limit; any late work is refused
    once other work has taken its place (its prompts, or its room in the pool, leased again)."""
    if kind == "rollout" and version < current_version - max_async_level:
        return (f"its version {version} is now beyond the async limit (current {current_version}, "
                f"max_async_level {max_async_level})")
    if replaced:
        return "its work was leased again after it expired"
    return None
