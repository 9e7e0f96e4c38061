import pytest
import torch

from protocol.grpo import clipped_token_loss, group_advantages
from node.trainer.round import minibatches


def test_advantages_are_group_relative_and_normalized():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    adv = group_advantages(rewards, normalize_std=True)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    # mean 0.75, std sqrt(0.1875)
    expected = (torch.tensor([1.0, 1.0, 1.0, 0.0]) - 0.75) / (0.1875 ** 0.5)
    assert torch.allclose(adv[1], expected, atol=1e-5)
    assert torch.allclose(adv.sum(-1), torch.zeros(2), atol=1e-5)


def test_advantages_without_std_are_centered_rewards():
    rewards = torch.tensor([[0.2, 0.4, 0.9]])
    assert torch.allclose(group_advantages(rewards, normalize_std=False), rewards - 0.5, atol=1e-6)


def test_zero_variance_group_has_no_signal():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_on_policy_loss_is_minus_token_weighted_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0])
    loss, stats = clipped_token_loss(logp, logp.clone(), adv, mask, 0.2, 0.28)
    # ratio 1 everywhere: loss = -(2*2 + (-1)*3) / 5 tokens
    assert loss.item() == pytest.approx(-(4 - 3) / 5)
    assert stats.clip_fraction == 0.0 and stats.ratio_mean == pytest.approx(1.0)


def test_gradient_raises_probability_of_positive_advantage_tokens():
    logits = torch.zeros(1, 2, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1]  # log-prob of token 0
    loss, _ = clipped_token_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.2)
    loss.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descent raises token 0's logit


def test_clipping_stops_gradient_beyond_the_trust_region():
    behaviour = torch.log(torch.tensor([[0.1]]))
    new = torch.log(torch.tensor([[0.5]])).requires_grad_(True)  # ratio 5 > 1 + clip_high
    loss, stats = clipped_token_loss(new, behaviour, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.28)
    loss.backward()
    assert loss.item() == pytest.approx(-1.28)
    assert new.grad.abs().item() == 0.0 and stats.clip_fraction == 1.0
    # with a negative advantage, the unclipped (pessimistic) term is taken and the gradient flows
    new.grad = None
    loss, _ = clipped_token_loss(new, behaviour, torch.tensor([-1.0]), torch.ones(1, 1), 0.2, 0.28)
    loss.backward()
    assert loss.item() == pytest.approx(5.0, rel=1e-5) and new.grad.item() > 0


def test_minibatches_keep_groups_whole_and_cover_the_shard():
    parts = minibatches(n_groups=5, group_size=4, steps=2)
    rows = torch.cat(parts).tolist()
    assert sorted(rows) == list(range(20))
    for part in parts:
        groups = {r // 4 for r in part.tolist()}
        assert sorted(part.tolist()) == [g * 4 + i for g in sorted(groups) for i in range(4)]
    cycled = minibatches(n_groups=2, group_size=3, steps=5)
    assert len(cycled) == 5 and torch.equal(cycled[0], cycled[2])
