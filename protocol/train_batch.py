"""From leased training samples to tensors: right-padded prompt+completion rows, the mask of the
positions that predict completion tokens, behaviour log-probs aligned to them, and advantages."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .grpo import group_advantages
from .v1 import coordinator_pb2 as pb


@dataclass
class TrainBatch:
    input_ids: torch.Tensor      # [N, L]
    attention_mask: torch.Tensor  # [N, L]
    target_mask: torch.Tensor    # [N, L-1]: position t predicts input_ids[:, t+1], a completion token
    behaviour_logp: torch.Tensor  # [N, L-1], aligned with target_mask
    advantages: torch.Tensor     # [N]
    rewards: torch.Tensor        # [N]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        return TrainBatch(*(t[rows] for t in (self.input_ids, self.attention_mask, self.target_mask,
                                              self.behaviour_logp, self.advantages, self.rewards)))


def build_batch(samples: list[pb.TrainingSample], pad_id: int, normalize_std: bool) -> TrainBatch:
    """Samples must come as whole groups of equal size (the coordinator leases them that way)."""
    groups: dict[int, list[pb.TrainingSample]] = {}
    for s in samples:
        groups.setdefault(s.group_id, []).append(s)
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"groups of unequal size in a training shard: {sorted(sizes)}")
    ordered = [s for g in groups.values() for s in g]
    rewards = torch.tensor([[s.reward for s in g] for g in groups.values()], dtype=torch.float32)
    advantages = group_advantages(rewards, normalize_std).reshape(-1)

    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in ordered)
    n = len(ordered)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    target = torch.zeros((n, width - 1), dtype=torch.bool)
    behaviour = torch.zeros((n, width - 1), dtype=torch.float32)
    for row, s in enumerate(ordered):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[row, :p + c] = torch.tensor(list(s.prompt_ids) + list(s.completion_ids))
        attention[row, :p + c] = 1
        target[row, p - 1:p + c - 1] = True
        behaviour[row, p - 1:p + c - 1] = torch.tensor(list(s.logprobs))
    return TrainBatch(input_ids, attention, target, behaviour, advantages, rewards.reshape(-1))


def token_logprobs(model, batch: TrainBatch, temperature: float) -> torch.Tensor:
    """log pi(token | prefix) at temperature T for every position, [N, L-1]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
