"""One trainer's part of an outer step:

    theta_v (loaded) -> H inner AdamW steps of GRPO on the shard -> pseudo-gradient
    ... (all-reduced with the round's other trainers: averaging.py) ...
    -> outer (Nesterov) step with the version's momentum -> theta_{v+1} and its momentum
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.config import RunConfig
from protocol.diloco import Tensors, outer_step, pseudo_gradient
from protocol.grpo import clipped_token_loss
from protocol.policy import adapter_state, load_adapter_state
from protocol.train_batch import build_batch, token_logprobs
from protocol.v1 import coordinator_pb2 as pb


@dataclass
class InnerResult:
    start: Tensors   # theta_v
    delta: Tensors   # theta_v - theta_local
    mean_loss: float
    clip_fraction: float
    masked_fraction: float
    samples: int


def minibatches(n_groups: int, group_size: int, steps: int) -> list[torch.Tensor]:
    """Row indices for each inner step: the shard's groups split into `steps` near-equal parts
    (cycled when there are fewer groups than steps), whole groups kept together."""
    parts = torch.tensor_split(torch.arange(n_groups), min(steps, n_groups))
    return [(parts[h % len(parts)][:, None] * group_size + torch.arange(group_size)).reshape(-1)
            for h in range(steps)]


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def inner_optimizer(model, config: RunConfig) -> torch.optim.Optimizer:
    """A fresh AdamW for every round, so a pseudo-gradient depends on its version and its shard
    alone: it points downhill on that shard, which the coordinator checks (screening.py), and a
    trainer that joins late computes as one that trained every round would. Carried over, the
    first moment from earlier rounds' shards outweighed a small H's own steps and honest
    pseudo-gradients failed that check."""
    return torch.optim.AdamW(trainable(model), lr=config.grpo.lr, weight_decay=config.grpo.weight_decay)


def inner_steps(model, samples: list[pb.TrainingSample], config: RunConfig, optimizer: torch.optim.Optimizer,
                pad_id: int) -> InnerResult:
    """H inner AdamW steps of GRPO on the shard; the model is left at theta_local."""
    grpo = config.grpo
    batch = build_batch(samples, pad_id, grpo.normalize_std)
    group_size = len(samples) // len({s.group_id for s in samples})
    start = adapter_state(model)

    model.train()
    stats = []
    for rows in minibatches(len(batch) // group_size, group_size, grpo.inner_steps):
        part = batch.select(rows)
        logp = token_logprobs(model, part, config.sampling.temperature)
        loss, step_stats = clipped_token_loss(logp, part.behaviour_logp, part.advantages, part.target_mask,
                                              grpo.clip_low, grpo.clip_high, grpo.ratio_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable(model), grpo.max_grad_norm)
        optimizer.step()
        stats.append(step_stats)
    model.eval()
    n = len(stats)
    return InnerResult(start, pseudo_gradient(start, adapter_state(model)), sum(s.loss for s in stats) / n,
                       sum(s.clip_fraction for s in stats) / n, sum(s.masked_fraction for s in stats) / n, len(batch))


def apply_outer(model, start: Tensors, delta: Tensors, momentum: Tensors, config: RunConfig) -> tuple[Tensors, Tensors]:
    """The outer step on the (averaged) pseudo-gradient; the model is left at theta_{v+1}."""
    outer = config.diloco
    new_params, new_momentum = outer_step(start, delta, momentum, outer.outer_lr, outer.outer_momentum, outer.nesterov)
    load_adapter_state(model, new_params)
    return new_params, new_momentum


@dataclass
class RoundResult:
    adapter: Tensors
    momentum: Tensors
    inner: InnerResult


def run_round(model, samples: list[pb.TrainingSample], config: RunConfig, momentum: Tensors,
              optimizer: torch.optim.Optimizer, pad_id: int) -> RoundResult:
    """A whole outer step by one trainer alone (no all-reduce)."""
    inner = inner_steps(model, samples, config, optimizer, pad_id)
    adapter, new_momentum = apply_outer(model, inner.start, inner.delta, momentum, config)
    return RoundResult(adapter, new_momentum, inner)
