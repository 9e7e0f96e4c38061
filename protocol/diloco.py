"""DiLoCo's outer step, over dicts of tensors: pseudo-gradient and Nesterov momentum.

The pseudo-gradient is theta_v - theta_local after H inner steps. With several trainers in a round
it is first averaged across them (weighted by samples); trainers apply the step to their average,
and the coordinator applies it to the pseudo-gradients they submit to check their results, so both
sides share this code. outer_lr=1 with momentum=0 reproduces plain continued training exactly.
"""
from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


def pseudo_gradient(start: Tensors, local: Tensors) -> Tensors:
    return {k: start[k] - local[k] for k in start}


def outer_step(start: Tensors, delta: Tensors, momentum: Tensors, lr: float, mu: float,
               nesterov: bool) -> tuple[Tensors, Tensors]:
    """SGD with (Nesterov) momentum on the pseudo-gradient. Returns (new params, new momentum)."""
    new_params, new_momentum = {}, {}
    for k, d in delta.items():
        buf = mu * momentum.get(k, torch.zeros_like(d)) + d
        update = d + mu * buf if nesterov else buf
        new_params[k] = start[k] - lr * update
        new_momentum[k] = buf
    return new_params, new_momentum


def weighted_mean(deltas: list[Tensors], weights: list[float]) -> Tensors:
    total = float(sum(weights))
    return {k: sum(d[k] * (w / total) for d, w in zip(deltas, weights)) for k in deltas[0]}
