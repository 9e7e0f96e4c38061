"""One outer step on one trainer, top to bottom:

    theta_v (loaded) -> H inner AdamW steps of GRPO on the shard -> pseudo-gradient
    -> outer (Nesterov) step with the version's momentum -> theta_{v+1} and its momentum
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.config import RunConfig
from protocol.policy import adapter_state, load_adapter_state
from protocol.v1 import coordinator_pb2 as pb

from .batch import build_batch, token_logprobs
from .diloco import outer_step, pseudo_gradient
from .grpo import clipped_token_loss


@dataclass
class RoundResult:
    adapter: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    mean_loss: float
    clip_fraction: float
    samples: int


def minibatches(n_groups: int, group_size: int, steps: int) -> list[torch.Tensor]:
    """Row indices for each inner step: the shard's groups split into `steps` near-equal parts
    (cycled when there are fewer groups than steps), whole groups kept together."""
    parts = torch.tensor_split(torch.arange(n_groups), min(steps, n_groups))
    return [(parts[h % len(parts)][:, None] * group_size + torch.arange(group_size)).reshape(-1)
            for h in range(steps)]


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def run_round(model, samples: list[pb.TrainingSample], config: RunConfig, momentum: dict[str, torch.Tensor],
              optimizer: torch.optim.Optimizer, pad_id: int) -> RoundResult:
    grpo = config.grpo
    batch = build_batch(samples, pad_id, grpo.normalize_std)
    group_size = len(samples) // len({s.group_id for s in samples})
    start = adapter_state(model)

    model.train()
    losses, clips = [], []
    for rows in minibatches(len(batch) // group_size, group_size, grpo.inner_steps):
        part = batch.select(rows)
        logp = token_logprobs(model, part, config.sampling.temperature)
        loss, stats = clipped_token_loss(logp, part.behaviour_logp, part.advantages, part.target_mask,
                                         grpo.clip_low, grpo.clip_high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable(model), grpo.max_grad_norm)
        optimizer.step()
        losses.append(stats.loss)
        clips.append(stats.clip_fraction)
    model.eval()

    delta = pseudo_gradient(start, adapter_state(model))
    outer = config.diloco
    new_params, new_momentum = outer_step(start, delta, momentum, outer.outer_lr, outer.outer_momentum,
                                          outer.nesterov)
    load_adapter_state(model, new_params)
    return RoundResult(new_params, new_momentum, sum(losses) / len(losses), sum(clips) / len(clips), len(batch))
