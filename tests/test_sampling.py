"""Seeded Gumbel-max sampling: bit-exact noise, the right distribution, and the validator's check."""
import math

import numpy as np
import pytest
import torch

from protocol.sampling import _keep_masks, check_choices, gumbel, sample, sampling_log_probs, scores, uniforms

M32 = 0xFFFFFFFF


# --- Independent references for the noise: the spec, written twice more -------------------------

def ref_mix(x: int) -> int:  # Python ints never overflow: the plain textbook lowbias32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def ref_numerator(seed: int, position: int, token: int) -> int:
    """u * 2**24 for one (seed, position, token)."""
    h = ref_mix(0x706F746C ^ (seed & M32))
    h = ref_mix(h ^ ((seed >> 32) & M32))
    h = ref_mix(h ^ (position & M32))
    return (ref_mix(ref_mix(h ^ token)) >> 9) * 2 + 1


def np_mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint32 multiplication wraps mod 2**32: that is the point
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def np_numerators(seed: int, position: int, vocab: int) -> np.ndarray:
    word = np.uint64(seed & ((1 << 64) - 1))
    h = np_mix(np.uint32(0x706F746C) ^ np.uint32(word & np.uint64(M32)))
    h = np_mix(h ^ np.uint32(word >> np.uint64(32)))
    h = np_mix(h ^ np.uint32(position & M32))
    bits = np_mix(np_mix(h ^ np.arange(vocab, dtype=np.uint32)))
    return (bits >> np.uint32(9)).astype(np.int64) * 2 + 1


SEEDS = [0, 1, 7, M32, 1 << 32, (1 << 63) - 1, -1, -(1 << 63), 123456789012345]
POSITIONS = [0, 1, 2, 31, 1 << 31, M32, 5, 6, 1000]


def test_uniforms_are_bit_identical_to_python_and_numpy_references():
    vocab = 257
    u = uniforms(SEEDS, POSITIONS, vocab)
    assert u.dtype == torch.float32
    numerators = (u.double() * 2 ** 24).long()
    assert bool((numerators.double() == u.double() * 2 ** 24).all())  # u is exactly k / 2**24
    for row, (seed, position) in enumerate(zip(SEEDS, POSITIONS)):
        assert numerators[row].tolist() == np_numerators(seed, position, vocab).tolist()
        assert [numerators[row, t].item() for t in (0, 1, 128, 256)] == [
            ref_numerator(seed, position, t) for t in (0, 1, 128, 256)]


def test_uniforms_depend_only_on_seed_position_and_token():
    wide = uniforms([5, 5, 6], [0, 1, 0], 40)
    assert torch.equal(uniforms([5, 5, 6], [0, 1, 0], 10), wide[:, :10])  # vocab size is not an input
    assert torch.equal(uniforms([6], [0], 40)[0], wide[2])  # neither is the batch
    assert not torch.equal(wide[0], wide[1]) and not torch.equal(wide[0], wide[2])
    assert 0 < wide.min() and wide.max() < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_uniforms_are_identical_on_cuda():
    seeds, positions = torch.tensor(SEEDS), torch.tensor(POSITIONS)
    assert torch.equal(uniforms(seeds.cuda(), positions.cuda(), 1000).cpu(), uniforms(seeds, positions, 1000))


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


def bound(df: int) -> float:
    """About 5 standard deviations above the chi-square mean: a real defect lands far above it, and
    the inputs are fixed, so the test is deterministic rather than flaky."""
    return df + 5 * math.sqrt(2 * df)


def test_uniforms_look_uniform_and_independent():
    seeds = torch.arange(100).repeat_interleave(20)
    positions = torch.arange(20).repeat(100)
    u = uniforms(seeds, positions, 1000)  # 2M draws
    k = (u.double() * 2 ** 23).long()  # the 23 random bits
    for field in (k >> 15, k & 0xFF):  # high and low bits
        counts = torch.bincount(field.flatten(), minlength=256)
        assert chi_square(counts, torch.full((256,), u.numel() / 256)) < bound(255)
    n = u.numel()
    assert abs(u.double().mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    centred = u.double() - 0.5
    for a, b in ((centred[:, 1:], centred[:, :-1]),  # neighbouring tokens
                 (centred[1:], centred[:-1])):  # neighbouring positions (and seeds)
        corr = (a * b).mean() / (centred.var())
        assert abs(corr.item()) < 5 / math.sqrt(a.numel())


def test_gumbel_is_minus_log_minus_log_u():
    u = uniforms([3], [4], 50)
    assert torch.allclose(gumbel([3], [4], 50), -torch.log(-torch.log(u)))


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
DRAWS = 20000


def draw(temperature, top_k=None, top_p=None, position=5):
    """DRAWS samples of LOGITS, one per seed 0..DRAWS-1."""
    logits = LOGITS.expand(DRAWS, -1)
    chosen = sample(logits, torch.arange(DRAWS), torch.full((DRAWS,), position), temperature, top_k, top_p)
    return torch.bincount(chosen, minlength=LOGITS.numel())


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.5])
def test_sampled_frequencies_match_softmax(temperature):
    counts = draw(temperature)
    expected = torch.softmax(LOGITS.double() / temperature, -1) * DRAWS
    assert chi_square(counts, expected) < bound(LOGITS.numel() - 1)


def test_positions_vary_the_draw_like_seeds_do():
    logits = LOGITS.expand(DRAWS, -1)
    chosen = sample(logits, torch.full((DRAWS,), 42), torch.arange(DRAWS), 1.0)
    expected = torch.softmax(LOGITS.double(), -1) * DRAWS
    assert chi_square(torch.bincount(chosen, minlength=6), expected) < bound(5)


@pytest.mark.parametrize("top_k,top_p,kept", [(3, None, 3), (None, 0.8, 2), (2, 0.95, 2), (1, None, 1)])
def test_filtered_frequencies_match_the_renormalised_softmax(top_k, top_p, kept):
    counts = draw(0.7, top_k, top_p)
    assert counts[kept:].sum() == 0  # LOGITS are sorted, so the kept tokens are the first ones
    probs = sampling_log_probs(LOGITS[None], 0.7, top_k, top_p)[0].double().exp()
    assert probs[kept:].sum() == 0 and abs(probs.sum().item() - 1) < 1e-6
    if kept > 1:
        assert chi_square(counts[:kept], probs[:kept] * DRAWS) < bound(kept - 1)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.softmax(LOGITS / 0.7, -1)  # ~[0.69, 0.17, 0.08, ...]
    above = torch.cat([torch.zeros(1), probs.cumsum(0)[:-1]])
    for p in (0.5, 0.8, 0.9, 0.99):
        keep = torch.isfinite(sampling_log_probs(LOGITS[None], 0.7, top_p=p)[0])
        assert torch.equal(keep, above < p)


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.6), (5, 0.9), (1, 0.3), (40, None), (None, 1.0)])
def test_filter_floors_match_the_definition(top_k, top_p):
    """The per-row floors against the rule itself, by brute force: kept when fewer than top_k rivals,
    holding less than top_p of the mass (scaled by exp(-slack / T)), exceed the token's logit + slack."""
    logits = (2 * torch.randn(6, 30, generator=torch.Generator().manual_seed(3))).round() / 2  # many ties
    temperature = 0.8
    probs = torch.softmax(logits.double() / temperature, -1)
    slacks = (0.0, 0.3, -0.3)
    masks = _keep_masks(logits, temperature, top_k, top_p, slacks)
    if top_p == 1.0 and top_k is None:
        assert masks is None
        return
    for mask, slack in zip(masks, slacks):
        rivals = logits[:, None, :] > logits[:, :, None] + slack  # [B, token, rival]
        expected = torch.ones_like(mask)
        if top_k is not None:
            expected &= rivals.sum(-1) < top_k
        if top_p is not None and top_p < 1:
            expected &= (rivals * probs[:, None, :]).sum(-1) * math.exp(-slack / temperature) < top_p
        assert torch.equal(mask, expected)


def test_filter_keeps_all_tokens_tied_at_the_boundary():
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0]])
    keep = torch.isfinite(scores(logits, [0], [0], 1.0, top_k=2))[0]
    assert keep.tolist() == [True, True, True, True, False]


def test_batched_sampling_equals_row_by_row():
    logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(0))
    seeds, positions = torch.arange(100, 108), torch.arange(8) * 3
    batched = sample(logits, seeds, positions, 0.9, top_k=10)
    single = [sample(logits[i:i + 1], seeds[i:i + 1], positions[i:i + 1], 0.9, top_k=10).item()
              for i in range(8)]
    assert batched.tolist() == single


def test_sampler_rejects_bad_inputs():
    logits = torch.zeros(1, 4)
    for kwargs in ({"temperature": 0.0}, {"temperature": -1.0}, {"temperature": math.inf},
                   {"temperature": 1.0, "top_k": 0}, {"temperature": 1.0, "top_p": 0.0},
                   {"temperature": 1.0, "top_p": 1.5}):
        with pytest.raises(ValueError):
            sample(logits, [0], [0], **kwargs)
    for bad in (torch.tensor([[0.0, math.nan]]), torch.tensor([[0.0, math.inf]]),
                torch.full((1, 2), -math.inf)):
        with pytest.raises(ValueError):
            sample(bad, [0], [0], 1.0)
    with pytest.raises(ValueError):
        uniforms([0, 1], [0], 4)


# --- The validator's check -----------------------------------------------------------------------

T_STEPS, VOCAB, SEED = 64, 50, 987654321


def rollout(temperature=0.9, seed=SEED, start=0, top_k=None, top_p=None):
    """Logits for T_STEPS positions and the tokens an honest node samples from them."""
    logits = 2 * torch.randn(T_STEPS, VOCAB, generator=torch.Generator().manual_seed(1))
    chosen = sample(logits, torch.full((T_STEPS,), seed), torch.arange(start, start + T_STEPS), temperature,
                    top_k, top_p)
    return logits, chosen


def test_checker_accepts_honest_samples_exactly():
    logits, chosen = rollout()
    verdict = check_choices(logits, chosen, SEED, 0, 0.9, margin=0.0)
    assert verdict.ok and verdict.worst_gap == 0.0 and verdict.gaps.shape == (T_STEPS,)


def test_checker_accepts_honest_samples_under_recomputation_noise():
    logits, chosen = rollout(top_k=10, top_p=0.9)
    noise = 1e-3 * (2 * torch.rand(logits.shape, generator=torch.Generator().manual_seed(2)) - 1)
    verdict = check_choices(logits + noise, chosen, SEED, 0, 0.9, margin=2e-3, top_k=10, top_p=0.9)
    assert verdict.ok


def test_checker_checks_the_right_positions():
    logits, chosen = rollout(start=10)
    assert check_choices(logits, chosen, SEED, 10, 0.9, margin=0.0).ok
    assert not check_choices(logits, chosen, SEED, 0, 0.9, margin=1e-3).ok


@pytest.mark.parametrize("case", ["other seed", "other temperature", "greedy answer"])
def test_checker_rejects_tokens_not_sampled_this_way(case):
    logits, _ = rollout()
    chosen = {"other seed": lambda: rollout(seed=SEED + 1)[1],
              "other temperature": lambda: rollout(temperature=0.3)[1],
              "greedy answer": lambda: logits.argmax(-1)}[case]()
    verdict = check_choices(logits, chosen, SEED, 0, 0.9, margin=1e-3)
    assert not verdict.ok
    assert (~verdict.accepted).sum() >= T_STEPS // 4
    assert verdict.worst_gap == verdict.gaps.max().item() > 1e-3
    assert not verdict.accepted[verdict.worst_position]


def test_checker_tolerates_a_near_tie_within_margin_only():
    g = gumbel([SEED], [0], 3)[0]
    node = -g + torch.tensor([1e-4, 0.0, -5.0])  # scores [1e-4, 0, -5]: token 0 wins narrowly
    assert sample(node[None], [SEED], [0], 1.0).item() == 0
    validator = node + torch.tensor([0.0, 3e-4, 0.0])  # recomputation flips the near-tie
    assert not check_choices(validator[None], torch.tensor([0]), SEED, 0, 1.0, margin=0.0).ok
    verdict = check_choices(validator[None], torch.tensor([0]), SEED, 0, 1.0, margin=1e-3)
    assert verdict.ok and 1e-4 < verdict.worst_gap < 3e-4


def seed_where(node_logits, wanted, **filters):
    """A seed whose position-0 sample from node_logits is `wanted`."""
    seeds = torch.arange(500)
    chosen = sample(node_logits.expand(500, -1), seeds, torch.zeros(500, dtype=torch.long), 1.0, **filters)
    return int(seeds[chosen == wanted][0])


def test_checker_widens_a_top_k_boundary_by_the_margin():
    node = torch.tensor([3.0, 1.00002, 1.0, -5.0, -5.0])
    validator = torch.tensor([3.0, 1.0, 1.00002, -5.0, -5.0])  # the 2nd and 3rd swap places
    seed = seed_where(node, 1, top_k=2)
    chosen = torch.tensor([1])
    assert check_choices(node[None], chosen, seed, 0, 1.0, margin=0.0, top_k=2).ok
    assert check_choices(validator[None], chosen, seed, 0, 1.0, margin=0.0, top_k=2).worst_gap == math.inf
    assert check_choices(validator[None], chosen, seed, 0, 1.0, margin=1e-4, top_k=2).ok
    outside = check_choices(validator[None], torch.tensor([3]), seed, 0, 1.0, margin=1e-4, top_k=2)
    assert not outside.ok and outside.worst_gap == math.inf


def test_checker_widens_a_top_p_boundary_by_the_margin():
    base = torch.tensor([0.5, 0.3, 0.2]).log()
    node = base + torch.tensor([0.0, 5e-5, -5e-5])  # token 2 sits just past the 0.8 nucleus
    validator = base + torch.tensor([0.0, -5e-5, 5e-5])  # ... and just inside it here
    assert torch.isinf(sampling_log_probs(node[None], 1.0, top_p=0.8)[0, 2])
    assert torch.isfinite(sampling_log_probs(validator[None], 1.0, top_p=0.8)[0, 2])
    # A seed where the node, not allowed token 2, picks token 0 although token 2 has the best score.
    seeds = torch.arange(500)
    zeros = torch.zeros(500, dtype=torch.long)
    unfiltered = sample(validator.expand(500, -1), seeds, zeros, 1.0)
    filtered = sample(node.expand(500, -1), seeds, zeros, 1.0, top_p=0.8)
    seed = int(seeds[(unfiltered == 2) & (filtered == 0)][0])
    chosen = torch.tensor([0])
    assert not check_choices(validator[None], chosen, seed, 0, 1.0, margin=0.0, top_p=0.8).ok
    assert check_choices(validator[None], chosen, seed, 0, 1.0, margin=2e-4, top_p=0.8).ok


def test_checker_rejects_bad_inputs():
    logits, chosen = rollout()
    with pytest.raises(ValueError):
        check_choices(logits, chosen[:-1], SEED, 0, 0.9, 0.0)
    with pytest.raises(ValueError):
        check_choices(logits, torch.full_like(chosen, VOCAB), SEED, 0, 0.9, 0.0)
    with pytest.raises(ValueError):
        check_choices(logits, chosen, SEED, 0, 0.9, -1.0)


def test_checker_on_an_empty_completion():
    verdict = check_choices(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), SEED, 0, 1.0, 0.0)
    assert verdict.ok and verdict.worst_position is None
