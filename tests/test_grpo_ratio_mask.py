"""Stale rollouts: tokens whose importance ratio is extreme are masked out of the GRPO loss."""
import pytest
import torch

from protocol.grpo import clipped_token_loss


def test_extreme_ratios_are_masked_and_carry_no_gradient():
    behaviour = torch.log(torch.tensor([[0.5, 0.01, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.5, 0.001]])).requires_grad_(True)  # ratios 1, 50, 0.002
    adv = torch.tensor([-1.0])  # negative: the unclipped term would pass the extreme ratios' gradient
    loss, stats = clipped_token_loss(new, behaviour, adv, torch.ones(1, 3), 0.2, 0.28, ratio_mask=8.0)
    loss.backward()
    assert new.grad[0, 1].item() == 0.0 and new.grad[0, 2].item() == 0.0 and new.grad[0, 0].item() > 0
    assert stats.masked_fraction == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx(1.0 / 3)  # only the ratio-1 token counts, over all 3 tokens


def test_without_a_mask_the_extreme_ratio_dominates():
    behaviour = torch.log(torch.tensor([[0.5, 0.01]]))
    new = torch.log(torch.tensor([[0.5, 0.5]]))
    loss, stats = clipped_token_loss(new, behaviour, torch.tensor([-1.0]), torch.ones(1, 2), 0.2, 0.28)
    assert loss.item() == pytest.approx((1 + 50) / 2) and stats.masked_fraction == 0.0
