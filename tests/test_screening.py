"""The coordinator's checks on a round's results: poisoned pseudo-gradients are found, candidates
are compared with the recomputed outer step."""
import math

import torch

from coordinator.screening import direction_offenders, expected_version, norm, relative_error, screen
from protocol.config import DilocoConfig
from protocol.diloco import outer_step

CFG = DilocoConfig(max_delta_norm=50.0, max_norm_ratio=8.0, min_cosine=0.0, outer_lr=0.7, outer_momentum=0.9)


def honest(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """n pseudo-gradients that share a direction (as shards of one batch do) plus their own noise."""
    g = torch.Generator().manual_seed(seed)
    common = {"a": torch.randn(64, 8, generator=g), "b": torch.randn(8, 64, generator=g)}
    return [{k: 0.01 * (v + torch.randn(v.shape, generator=g)) for k, v in common.items()} for _ in range(n)]


def as_round(deltas):
    return {f"n{i}": d for i, d in enumerate(deltas)}, {f"n{i}": 16.0 for i in range(len(deltas))}


def test_honest_round_passes():
    deltas, weights = as_round(honest(3))
    history = [norm(d) for d in deltas.values()]
    assert screen(deltas, weights, history, CFG) == {}


def test_scaled_pseudo_gradient_is_caught_by_the_relative_cap():
    good = honest(2)
    history = [norm(d) for d in good] * 2
    deltas, weights = as_round(good + [{k: v * 100 for k, v in good[0].items()}])
    assert set(screen(deltas, weights, history, CFG)) == {"n2"}
    # with no history yet, the absolute cap still bounds it
    huge = {k: v * 1e5 for k, v in good[0].items()}
    assert set(screen(*as_round(good + [huge]), [], CFG)) == {"n2"}


def test_random_pseudo_gradient_is_caught():
    good = honest(3)
    g = torch.Generator().manual_seed(1)
    noise = {k: torch.randn(v.shape, generator=g) for k, v in good[0].items()}
    deltas, weights = as_round(good + [noise])
    assert set(screen(deltas, weights, [norm(d) for d in good], CFG)) == {"n3"}
    # noise scaled to an honest norm passes the norm caps; a cosine floor above zero catches it
    scale = norm(good[0]) / norm(noise)
    quiet = {k: v * scale for k, v in noise.items()}
    deltas, weights = as_round(good + [quiet])
    assert screen(deltas, weights, [norm(d) for d in good], CFG.model_copy(update={"min_cosine": -1.0})) == {}
    assert set(screen(deltas, weights, [norm(d) for d in good], CFG.model_copy(update={"min_cosine": 0.2}))) == {"n3"}


def test_sign_flipped_pseudo_gradient_is_caught_with_three_or_more_trainers():
    good = honest(3)
    flipped = {k: -v for k, v in good[0].items()}
    deltas, weights = as_round(good[1:] + [flipped])
    assert set(screen(deltas, weights, [norm(d) for d in good], CFG)) == {"n2"}


def test_non_finite_pseudo_gradient_is_caught():
    good = honest(2)
    bad = {k: v.clone() for k, v in good[0].items()}
    bad["a"][0, 0] = math.nan
    assert set(screen(*as_round(good + [bad]), [], CFG)) == {"n2"}


def test_expected_version_is_the_outer_step_on_the_weighted_mean():
    parent = {"a": torch.randn(4, 4), "b": torch.randn(4)}
    momentum = {k: torch.randn_like(v) for k, v in parent.items()}
    d1 = {k: torch.randn_like(v) for k, v in parent.items()}
    d2 = {k: torch.randn_like(v) for k, v in parent.items()}
    adapter, new_momentum, mean = expected_version(parent, momentum, [d1, d2], [1.0, 3.0], CFG)
    manual = {k: 0.25 * d1[k] + 0.75 * d2[k] for k in parent}
    ref_adapter, ref_momentum = outer_step(parent, manual, momentum, 0.7, 0.9, True)
    assert all(torch.allclose(adapter[k], ref_adapter[k]) and torch.allclose(new_momentum[k], ref_momentum[k])
               for k in parent)
    step = norm({k: adapter[k] - parent[k] for k in parent})
    # fp16 rounding of the average stays far inside the tolerance; a tampered candidate does not
    rounded = {k: parent[k] + (adapter[k] - parent[k]).half().float() for k in parent}
    assert relative_error(rounded, adapter, step) < 1e-2
    tampered = {k: v + torch.randn_like(v) for k, v in adapter.items()}
    assert relative_error(tampered, adapter, step) > CFG.agreement_rtol
    assert relative_error({"a": adapter["a"]}, adapter, step) == math.inf


def test_direction_check_refuses_exactly_one_of_a_pseudo_gradient_and_its_sign_flip():
    slopes = {"downhill": 0.3, "uphill": -0.3, "no_signal": 0.0}  # gradient . delta; a sign flip negates it
    assert set(direction_offenders(slopes)) == {"uphill"}
    assert set(direction_offenders({n: -s for n, s in slopes.items()})) == {"downhill"}
