"""TOPLOC-style proofs on their own (the cross-check with the toploc package is test_proofs_toploc.py)."""
import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from protocol.proofs import (PRIME, ProofFormatError, ProofResult, ProofThresholds, build_proofs,
                             build_proofs_batch, passes, split_prefill, verify_proofs, verify_proofs_batch)
from protocol.proofs import _evaluate, _injective_modulus, _interpolate, _reduce

HIDDEN = 256


def activations(decode_steps=70, hidden=HIDDEN, prompt_len=9, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(prompt_len, hidden, generator=g).to(dtype),
            *[torch.randn(hidden, generator=g).to(dtype) for _ in range(decode_steps)]]


def exact(result: ProofResult) -> bool:
    return result.exp_mismatches == 0 and result.mant_err_mean == 0 and result.mant_err_median == 0


def test_round_trip_on_identical_activations():
    acts = activations()
    proofs = build_proofs(acts)
    assert len(proofs) == 1 + 3  # the prompt block, then 70 decode steps in chunks of 32, 32, 6
    assert {len(p) for p in proofs} == {258}  # 2-byte modulus + 128 2-byte coefficients
    results = verify_proofs(acts, proofs)
    assert all(exact(r) and r.points == 128 and passes(r) for r in results)
    assert build_proofs(acts) == proofs  # deterministic


def test_chunking_options():
    decode = torch.randn(40, HIDDEN, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    proofs = build_proofs(decode, decode_batching_size=16, topk=64, skip_prefill=True)
    assert [len(p) for p in proofs] == [130] * 3  # 16 + 16 + 8 rows
    assert proofs == build_proofs(list(decode), 16, 64, skip_prefill=True)  # a tensor is its rows
    assert all(exact(r) for r in verify_proofs(decode, proofs, 16, 64, skip_prefill=True))
    assert len(build_proofs(decode[:1])) == 1  # the prompt block alone


def test_split_prefill_matches_step_by_step_activations():
    acts = activations(decode_steps=5)
    hidden = torch.cat([acts[0], torch.stack(acts[1:])])
    assert build_proofs(split_prefill(hidden, 9)) == build_proofs(acts)
    with pytest.raises(ValueError):
        split_prefill(hidden, 0)


def test_fp32_and_fp16_are_proved_as_their_bf16_rounding():
    for dtype in (torch.float32, torch.float16):
        acts = activations(dtype=dtype)
        rounded = [a.to(torch.bfloat16) for a in acts]
        assert build_proofs(acts) == build_proofs(rounded)
        assert all(exact(r) for r in verify_proofs(rounded, build_proofs(acts)))


def test_small_noise_passes_and_other_activations_fail():
    acts = activations(dtype=torch.float32)
    proofs = build_proofs(acts)
    g = torch.Generator().manual_seed(5)
    recomputed = [a * (1 + 1e-3 * torch.randn(a.shape, generator=g)) for a in acts]
    results = verify_proofs(recomputed, proofs)
    assert all(passes(r) for r in results) and not all(exact(r) for r in results)
    assert not any(passes(r) for r in verify_proofs(activations(dtype=torch.float32, seed=1), proofs))
    scaled = [a * 1.5 for a in acts]  # same top-k positions, other values
    assert not any(passes(r) for r in verify_proofs(scaled, proofs))


def test_tampered_proof_fails():
    acts = activations()
    proof = bytearray(build_proofs(acts)[1])
    proof[100] ^= 0x01  # one coefficient bit: the polynomial changes everywhere
    assert not passes(verify_proofs(acts, [build_proofs(acts)[0], bytes(proof), *build_proofs(acts)[2:]])[1])


def test_hidden_smaller_than_topk_commits_to_the_whole_chunk():
    acts = activations(decode_steps=1, hidden=64, prompt_len=1)  # two chunks of 64 values
    proofs = build_proofs(acts, topk=128)
    assert [len(p) for p in proofs] == [2 + 2 * 64] * 2
    results = verify_proofs(acts, proofs, topk=128)
    assert all(exact(r) and r.points == 64 for r in results)
    with pytest.raises(ProofFormatError, match="130 bytes"):
        verify_proofs(acts, [proofs[0], proofs[1][:-2]], topk=128)


def test_indices_colliding_mod_the_prime_get_a_smaller_modulus():
    chunk = torch.zeros(32, 4096)  # one decode chunk of 131072 values
    chunk.view(-1)[torch.arange(128) * 1000] = torch.arange(1, 129, dtype=torch.float32)
    chunk.view(-1)[5 + PRIME] = 500.0  # index 5 + PRIME collides with 5 mod PRIME
    chunk.view(-1)[5] = 400.0
    proof = build_proofs(chunk, skip_prefill=True)[0]
    assert int.from_bytes(proof[:2], "big") < PRIME
    assert exact(verify_proofs(chunk, [proof], skip_prefill=True)[0])


def test_malformed_proofs_are_errors():
    acts = activations(decode_steps=3)
    proofs = build_proofs(acts)
    for bad in ([proofs[0]], proofs + proofs[:1], [proofs[0], proofs[1][:-1]], [proofs[0], b"\0" * 258],
                [proofs[0], b"\xff\xff" + proofs[1][2:]], [proofs[0], "not bytes"]):
        with pytest.raises(ProofFormatError):
            verify_proofs(acts, bad)


def test_bad_activations_are_errors_not_null_proofs():
    good = activations(decode_steps=2)
    nan = [good[0], torch.full((HIDDEN,), float("nan"), dtype=torch.bfloat16)]
    cases = [([], ValueError), ([torch.zeros(0)], ValueError), (nan, ValueError),
             ([good[0].to(torch.int32)], TypeError), (torch.zeros(HIDDEN), ValueError)]
    for acts, error in cases:
        with pytest.raises(error):
            build_proofs(acts)
    with pytest.raises(ValueError):
        build_proofs(good, decode_batching_size=0)


def test_passes_uses_the_published_thresholds_scaled_to_the_points():
    assert passes(ProofResult(90, 10.0, 8.0, 128))
    assert not passes(ProofResult(91, 1.0, 1.0, 128))
    assert not passes(ProofResult(0, 10.5, 1.0, 128))
    assert not passes(ProofResult(0, 1.0, 8.5, 128))
    assert not passes(ProofResult(46, 1.0, 1.0, 64))  # 90/128 of 64 is 45
    assert not passes(ProofResult(128, float("inf"), float("inf"), 128))
    strict = ProofThresholds(max_exp_mismatch_fraction=0.1, max_mant_err_mean=2, max_mant_err_median=1)
    assert passes(ProofResult(12, 2.0, 1.0, 128), strict)
    assert not passes(ProofResult(13, 0.0, 0.0, 128), strict)


def test_interpolation_goes_through_every_point():
    rng = np.random.default_rng(0)
    for k in (128, 7, 2, 1):  # row by row: each row its own polynomial
        xs = np.stack([rng.choice(PRIME, size=k, replace=False) for _ in range(5)])
        ys = rng.integers(0, 65536, size=(5, k))  # bf16 bit patterns, some above PRIME
        coeffs = _interpolate(xs, ys)
        assert coeffs.shape == (5, k) and (coeffs >= 0).all() and (coeffs < PRIME).all()
        assert (_evaluate(coeffs, xs) == ys % PRIME).all()
        first_points = [field_value(row, int(x)) for row, x in zip(coeffs.tolist(), xs[:, 0])]
        assert first_points == (ys[:, 0] % PRIME).tolist()  # checked without _evaluate too


def test_float_reduction_is_exact_below_2_to_51():
    rng = np.random.default_rng(1)
    top = 2**51 // PRIME
    multiples = np.concatenate([rng.integers(0, top, 10**5), np.arange(top - 100, top + 1)])
    values = np.concatenate([multiples * PRIME + offset for offset in (0, 1, PRIME - 1)] +
                            [rng.integers(0, 2**51, 10**5), np.arange(3 * PRIME)])
    values = values[values < 2**51]
    assert (_reduce(values.astype(np.float64)).astype(np.int64) == values % PRIME).all()


# --- Many sequences at once: the same bytes and verdicts as one by one, and as an independent reference --

def field_value(coeffs, x):
    value = 0
    for c in reversed(coeffs):
        value = (value * x + c) % PRIME
    return value


def reference_chunks(rows, batching, skip_prefill):
    rows = [row.reshape(-1).to(torch.bfloat16) for row in rows]
    decode = rows if skip_prefill else rows[1:]
    return ([] if skip_prefill else [rows[0]],
            [torch.cat(decode[i:i + batching]) for i in range(0, len(decode), batching)])


def reference_points(chunk, proof, topk):
    """toploc's selection (torch topk of |bf16| per chunk) and the proof evaluated there, in Python ints."""
    indices = chunk.abs().topk(min(topk, chunk.numel())).indices.tolist()
    bits = [b & 0xFFFF for b in chunk.view(torch.int16)[indices].tolist()]
    words = [int.from_bytes(proof[i:i + 2], "big") for i in range(0, len(proof), 2)]
    return indices, bits, words[0], [field_value(words[1:], i % words[0]) for i in indices]


def assert_proves(chunk, proof, topk):
    """A proof is toploc's only polynomial (degree < k through k distinct points), so checking its
    points checks its bytes."""
    indices, bits, modulus, committed = reference_points(chunk, proof, topk)
    assert len(proof) == 2 + 2 * len(indices) and modulus == _injective_modulus(indices)
    assert committed == [b % PRIME for b in bits]


def reference_result(chunk, proof, topk):
    indices, bits, _, committed = reference_points(chunk, proof, topk)
    errors = [abs((c & 0x7F) - (b & 0x7F)) for c, b in zip(committed, bits) if c & 0x7F80 == b & 0x7F80]
    if not errors:
        return ProofResult(len(indices), math.inf, math.inf, len(indices))
    points, mean, median = len(indices), sum(errors) / len(errors), float(statistics.median(errors))
    return ProofResult(points - len(errors), mean, median, points)


DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@st.composite
def batches(draw):
    """Sequences of mixed widths and row dtypes, optionally with heavy ties, and chunking settings."""
    ties = draw(st.booleans())
    sequences = []
    for _ in range(draw(st.integers(1, 5))):
        hidden, prompt = draw(st.sampled_from([1, 3, 16, 40, 64, 130])), draw(st.integers(1, 4))
        steps = draw(st.integers(0, 6))
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        rows = [torch.randn(prompt, hidden, generator=g), *torch.randn(steps, hidden, generator=g)]
        dtypes = draw(st.lists(st.sampled_from(DTYPES), min_size=len(rows), max_size=len(rows)))
        sequences.append([((row * 2).round() if ties else row).to(dtype) for row, dtype in zip(rows, dtypes)])
    return sequences, draw(st.integers(1, 4)), draw(st.integers(1, 48)), draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(batches())
def test_a_batch_proves_and_verifies_each_sequence_as_alone(case):
    sequences, batching, topk, skip_prefill = case
    proofs = build_proofs_batch(sequences, batching, topk, skip_prefill)
    g = torch.Generator().manual_seed(0)
    noisy = [[row.float() * (1 + 0.02 * torch.randn(row.shape, generator=g)) for row in rows]
             for rows in sequences]
    verdicts = verify_proofs_batch(noisy, proofs, batching, topk, skip_prefill)
    assert len(proofs) == len(verdicts) == len(sequences)
    for rows, own, recomputed, results in zip(sequences, proofs, noisy, verdicts):
        assert own == build_proofs(rows, batching, topk, skip_prefill)
        prompt, decode = reference_chunks(rows, batching, skip_prefill)
        assert len(own) == len(prompt + decode)
        for chunk, proof in zip(prompt + decode, own):
            assert_proves(chunk, proof, topk)
        assert results == verify_proofs(recomputed, own, batching, topk, skip_prefill)
        prompt, decode = reference_chunks(recomputed, batching, skip_prefill)
        assert results == [reference_result(chunk, proof, topk) for chunk, proof in zip(prompt + decode, own)]
    exact_verdicts = verify_proofs_batch(sequences, proofs, batching, topk, skip_prefill)
    assert all(exact(r) for results in exact_verdicts for r in results)


def test_demo_shaped_batch_matches_the_reference_with_ties_at_the_cut():
    """The demo's shapes (prompts of a few rows of 256, 0-3 decode steps, k=128), a chunk past PRIME
    values and bf16 values coarse enough that the k-th magnitude is nearly always tied."""
    g = torch.Generator().manual_seed(3)
    sequences = [[(torch.randn(int(torch.randint(1, 12, (1,), generator=g)), HIDDEN, generator=g) * 8)
                  .round().to(torch.bfloat16),
                  *torch.randn(i % 4, HIDDEN, generator=g)] for i in range(24)]  # fp32 decode rows
    wide = torch.randn(32, 4096, generator=g)  # one decode chunk of 131072 values
    wide.view(-1)[[5, 5 + PRIME]] = 100.0  # selected, and equal mod PRIME
    sequences.insert(10, [torch.randn(1, 8, generator=g), wide])
    proofs = build_proofs_batch(sequences)
    assert int.from_bytes(proofs[10][1][:2], "big") < PRIME
    for rows, own in zip(sequences, proofs):
        prompt, decode = reference_chunks(rows, 32, False)
        for chunk, proof in zip(prompt + decode, own):
            assert_proves(chunk, proof, 128)
    one_by_one = [verify_proofs(rows, own) for rows, own in zip(sequences, proofs)]
    assert verify_proofs_batch(sequences, proofs) == one_by_one


def test_a_malformed_proof_fails_its_sequence_only():
    sequences = [activations(decode_steps=3, seed=seed) for seed in range(7)]
    proofs = build_proofs_batch(sequences)
    honest = [verify_proofs(s, p) for s, p in zip(sequences, proofs)]
    bad = [list(p) for p in proofs]
    bad[1][1] = bad[1][1][:-2]  # truncated
    bad[2][0] = b"\xff\xff" + bad[2][0][2:]  # modulus outside the field
    bad[3] = bad[3][:1]  # a proof missing
    bad[4][1] = b"\0" * 258  # modulus 0
    bad[5] = [bad[5][0][:-2] + b"\0", b"\0" * 258]  # two bad proofs: the first is named
    results = verify_proofs_batch(sequences, bad)
    reasons = {1: "proof 1: a proof here is 258 bytes", 2: "proof 0: modulus 65535", 3: "expected 2 proofs",
               4: "proof 1: modulus 0", 5: "proof 0: a proof here"}
    for number, result in enumerate(results):
        if number in reasons:
            assert isinstance(result, ProofFormatError) and reasons[number] in str(result)
            with pytest.raises(ProofFormatError, match=reasons[number]):
                verify_proofs(sequences[number], bad[number])
        else:
            assert result == honest[number]


def test_bad_activations_in_a_batch_name_their_sequence():
    good = activations(decode_steps=2)
    nan = [good[0], torch.full((HIDDEN,), float("nan"))]
    inf = [good[0] * torch.inf, *good[1:]]
    for sequences, error, where in [([good, good, nan], ValueError, "sequence 2: .*NaN"),
                                    ([good, inf], ValueError, "sequence 1: .*NaN or infinity"),
                                    ([good, [good[0].to(torch.int32)]], TypeError, "sequence 1"),
                                    ([[], good], ValueError, "sequence 0: no activations")]:
        with pytest.raises(error, match=where):
            build_proofs_batch(sequences)
        with pytest.raises(error, match=where):
            verify_proofs_batch(sequences, [[]] * len(sequences))
    with pytest.raises(ValueError, match="2 sequences but 1 lists"):
        verify_proofs_batch([good, good], [build_proofs(good)])
    assert build_proofs_batch([]) == [] and verify_proofs_batch([], []) == []


# --- A real (tiny, random) model: the node's cached decode against the validator's prefill --------

def tiny_llama(seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


@torch.no_grad()
def cached_decode_activations(model, prompt, completion):
    """What a node records: the prompt block, then the final hidden state of each fed-back token."""
    out = model.model(input_ids=prompt, use_cache=True)
    acts = [out.last_hidden_state[0]]
    for t in range(completion.shape[1]):
        out = model.model(input_ids=completion[:, t:t + 1], past_key_values=out.past_key_values,
                          use_cache=True)
        acts.append(out.last_hidden_state[0, 0])
    return acts


@torch.no_grad()
def test_recomputed_prefill_passes_and_other_weights_fail():
    model = tiny_llama(0)
    g = torch.Generator().manual_seed(1)
    # 33 generated tokens: decode chunks of 32 and 1 (256 values, still more than topk).
    prompt, completion = torch.randint(3, 64, (1, 9), generator=g), torch.randint(3, 64, (1, 33), generator=g)
    sequence = torch.cat([prompt, completion], 1)
    proofs = build_proofs(cached_decode_activations(model, prompt, completion))

    prefill = model.model(input_ids=sequence).last_hidden_state[0]
    # The same sequence left-padded in a batch with a longer one: another batch composition.
    other = torch.randint(3, 64, (1, sequence.shape[1] + 7), generator=g)
    pad = torch.zeros(1, 7, dtype=torch.long)
    ids = torch.cat([torch.cat([pad, sequence], 1), other])
    mask = torch.cat([torch.cat([pad, torch.ones_like(sequence)], 1), torch.ones_like(other)])
    batched = model.model(input_ids=ids, attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[0, 7:]
    for hidden in (prefill, batched):
        assert all(passes(r) for r in verify_proofs(split_prefill(hidden, 9), proofs))

    swapped = tiny_llama(1).model(input_ids=sequence).last_hidden_state[0]
    results = verify_proofs(split_prefill(swapped, 9), proofs)
    assert not any(passes(r) for r in results)
    assert min(r.exp_mismatches for r in results) > 100
