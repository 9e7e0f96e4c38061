import torch

from protocol.diloco import outer_step, pseudo_gradient


def test_plain_outer_step_reproduces_local_training():
    start = {"w": torch.tensor([1.0, 2.0])}
    local = {"w": torch.tensor([0.5, 2.5])}
    delta = pseudo_gradient(start, local)
    assert torch.equal(delta["w"], torch.tensor([0.5, -0.5]))
    params, momentum = outer_step(start, delta, {}, lr=1.0, mu=0.0, nesterov=True)
    assert torch.equal(params["w"], local["w"])
    assert torch.equal(momentum["w"], delta["w"])


def test_nesterov_momentum_accumulates_across_versions():
    start = {"w": torch.tensor([0.0])}
    delta = {"w": torch.tensor([1.0])}
    params, buf = outer_step(start, delta, {"w": torch.tensor([2.0])}, lr=0.5, mu=0.9, nesterov=True)
    # buf = 0.9*2 + 1 = 2.8; update = 1 + 0.9*2.8 = 3.52
    assert torch.allclose(buf["w"], torch.tensor([2.8]))
    assert torch.allclose(params["w"], torch.tensor([-0.5 * 3.52]))
    params, _ = outer_step(start, delta, {"w": torch.tensor([2.0])}, lr=0.5, mu=0.9, nesterov=False)
    assert torch.allclose(params["w"], torch.tensor([-0.5 * 2.8]))
