"""GRPO math: group-relative advantages and the token-level clipped importance-ratio loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards [groups, G] -> advantages [groups, G]: reward minus its group's mean, optionally
    divided by the group's standard deviation. A group whose rewards are all equal gets zeros."""
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if normalize_std:
        centered = centered / (rewards.std(dim=-1, unbiased=False, keepdim=True) + eps)
    return centered


@dataclass
class LossStats:
    loss: float
    clip_fraction: float
    ratio_mean: float
    masked_fraction: float


def clipped_token_loss(logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor,
                       mask: torch.Tensor, clip_low: float, clip_high: float,
                       ratio_mask: float = float("inf")) -> tuple[torch.Tensor, LossStats]:
    """Token-level GRPO loss. logp, behaviour_logp, mask: [N, T]; advantages: [N].

    ratio = pi/behaviour per token; the objective is min(ratio*A, clip(ratio, 1-clip_low, 1+clip_high)*A),
    averaged over all completion tokens of the batch (so long completions are not down-weighted).
    The behaviour log-probs make the ratio correct rollouts that came from an older version; a token
    whose ratio leaves [1/ratio_mask, ratio_mask] is masked out (it still counts in the mean's
    denominator, so masking shrinks the step instead of re-weighting the rest)."""
    ratio = torch.exp(logp - behaviour_logp)
    adv = advantages[:, None]
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    weight = mask.to(per_token.dtype)
    tokens = weight.sum().clamp(min=1.0)
    kept = weight * ((ratio <= ratio_mask) & (ratio >= 1.0 / ratio_mask)).to(per_token.dtype).detach()
    loss = (per_token * kept).sum() / tokens
    with torch.no_grad():
        clipped = ((ratio != clipped_ratio) & mask.bool()).sum() / tokens
        ratio_mean = (ratio * weight).sum() / tokens
        masked = (weight - kept).sum() / tokens
    return loss, LossStats(loss.item(), clipped.item(), ratio_mean.item(), masked.item())
