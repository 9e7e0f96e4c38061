"""Checking a round's results before anything is published (pure functions over tensors).

Each trainer submits its candidate version and its own pseudo-gradient. The coordinator:
1. screens every pseudo-gradient: finite; norm under an absolute cap and under max_norm_ratio times
   the median of recently accepted ones; optionally (three or more trainers) a cosine with the
   other trainers' weighted mean of at least min_cosine. A pseudo-gradient scaled x100 or replaced
   by noise fails the norm caps, and its trainer is the offender.
2. checks the direction of each that passed (direction_check): delta = theta - theta_local must be
   a descent direction of its own trainer's GRPO loss on the shard it was leased, which the
   coordinator holds: gradient . delta > 0 at the parent version (direction.py). A sign flip keeps
   the norm, and shards of a GRPO batch give nearly orthogonal pseudo-gradients (cosine ~ -0.01
   measured), so a flipped one agrees with the others' mean as well as an honest one does and no
   cosine floor can tell them apart. The slope can: it is odd in delta, so of delta and -delta
   exactly one passes unless it is zero, which only a shard without signal gives. Inner steps
   on the shard from a fresh optimizer make it positive; a finite-step test (the loss at
   theta -/+ delta) was not enough, because on small shards the steps overshoot and the
   curvature terms swamp the first-order one.
3. recomputes what each candidate should be: the outer step on the weighted mean of the submitted
   pseudo-gradients of the peers it says it averaged with. hivemind's compressed all-reduce gives
   every peer slightly different low bits, so a candidate agrees when its distance to that
   recomputation, relative to the size of the update, is within agreement_rtol.
"""
from __future__ import annotations

import math
import statistics

import torch

from protocol.config import DilocoConfig
from protocol.diloco import Tensors, outer_step, weighted_mean

HISTORY_MIN = 3  # accepted norms needed before the relative cap applies


def norm(tensors: Tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def _flat(tensors: Tensors) -> torch.Tensor:
    return torch.cat([tensors[k].double().reshape(-1) for k in sorted(tensors)])


def screen(deltas: dict[str, Tensors], weights: dict[str, float], history: list[float],
           cfg: DilocoConfig) -> dict[str, str]:
    """node id -> why its pseudo-gradient is refused, for every offender."""
    cap = cfg.max_delta_norm
    if len(history) >= HISTORY_MIN:
        cap = min(cap, cfg.max_norm_ratio * statistics.median(history))
    offenders = {}
    for node, delta in deltas.items():
        size = norm(delta)
        if not math.isfinite(size):
            offenders[node] = "non-finite pseudo-gradient"
        elif size > cap:
            offenders[node] = f"pseudo-gradient norm {size:.3g} over the cap {cap:.3g}"
    honest = [n for n in deltas if n not in offenders]
    if len(honest) >= 3 and cfg.min_cosine > -1.0:
        flat = {n: _flat(deltas[n]) for n in honest}
        for node in honest:
            others = [n for n in honest if n != node]
            mean = sum(flat[n] * weights[n] for n in others) / sum(weights[n] for n in others)
            cosine = float(torch.nn.functional.cosine_similarity(flat[node], mean, dim=0))
            if cosine < cfg.min_cosine:
                offenders[node] = f"pseudo-gradient cosine {cosine:.3f} with the others' mean < {cfg.min_cosine}"
    return offenders


def direction_offenders(slopes: dict[str, float]) -> dict[str, str]:
    """node id -> why, for each pseudo-gradient that points uphill on its own shard; slopes[node] is
    gradient . delta there. Zero (a shard without signal) passes."""
    return {node: f"pseudo-gradient points uphill on its own shard (gradient . delta = {slope:.3g} < 0)"
            for node, slope in slopes.items() if slope < 0}


def expected_version(parent: Tensors, momentum: Tensors, deltas: list[Tensors], weights: list[float],
                     cfg: DilocoConfig) -> tuple[Tensors, Tensors, Tensors]:
    """(adapter, momentum, averaged pseudo-gradient) the outer step gives on exact inputs."""
    mean = weighted_mean(deltas, weights)
    adapter, new_momentum = outer_step(parent, mean, momentum, cfg.outer_lr, cfg.outer_momentum, cfg.nesterov)
    return adapter, new_momentum, mean


def relative_error(candidate: Tensors, expected: Tensors, scale: float) -> float:
    """|candidate - expected| / scale (the size of the update), over the same tensor names."""
    if set(candidate) != set(expected):
        return math.inf
    return norm({k: candidate[k].double() - expected[k].double() for k in expected}) / max(scale, 1e-12)
