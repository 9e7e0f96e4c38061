"""Our proofs against the public `toploc` 0.1.6 package, both ways: same bytes, same verdicts.

toploc is an optional reference, not a dependency. Its wheel is built for another torch, so install
it from source after torch:
    pip install --no-build-isolation --no-binary toploc toploc==0.1.6
"""
import pytest
import torch

from protocol.proofs import PRIME, build_proofs, verify_proofs

# exc_type=ImportError: a wheel built for another torch is found but fails to load (undefined symbol).
toploc = pytest.importorskip("toploc", reason="toploc is not importable (optional; build it from source, "
                             "see this file's docstring)", exc_type=ImportError)


def bf16_activations(seed, prompt_shape=(9, 256), decode_steps=70, hidden=256):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(prompt_shape, generator=g).to(torch.bfloat16),
            *[torch.randn(hidden, generator=g).to(torch.bfloat16) for _ in range(decode_steps)]]


CASES = {  # name: (activations, decode_batching_size, topk, skip_prefill)
    "prompt and decode": (bf16_activations(0), 32, 128, False),
    "small topk, odd chunks": (bf16_activations(1, decode_steps=23), 5, 16, False),
    "decode only, as a tensor": (torch.randn(40, 512, generator=torch.Generator().manual_seed(2))
                                 .to(torch.bfloat16), 32, 128, True),
    # 32 x 4096 values per chunk: indices past PRIME, so the modulus search matters.
    "wide hidden": (bf16_activations(3, prompt_shape=(4, 4096), decode_steps=64, hidden=4096),
                    32, 128, False),
    "heavy ties": ([(torch.randn(6, 256, generator=torch.Generator().manual_seed(4)) * 4).round()
                    .to(torch.bfloat16)], 32, 128, False),
}


@pytest.mark.parametrize("name", CASES)
def test_same_bytes_as_toploc(name):
    acts, batching, topk, skip_prefill = CASES[name]
    ours = build_proofs(acts, batching, topk, skip_prefill)
    theirs = toploc.build_proofs_bytes(acts, batching, topk, skip_prefill)
    assert ours == theirs


def test_the_wide_case_exercises_a_modulus_below_the_prime():
    acts, batching, topk, skip_prefill = CASES["wide hidden"]
    moduli = {int.from_bytes(p[:2], "big") for p in build_proofs(acts, batching, topk, skip_prefill)}
    assert PRIME in moduli and min(moduli) < PRIME


def same(ours, theirs):
    return [(r.exp_mismatches, r.mant_err_mean, r.mant_err_median) for r in ours] == [
        (r.exp_mismatches, r.mant_err_mean, r.mant_err_median) for r in theirs]


@pytest.mark.parametrize("noise", [0.0, 1e-2, 5e-2])
def test_each_verifies_the_others_proofs_with_the_same_verdict(noise):
    # Chunks of at most PRIME values, where toploc's verifier agrees with ours (see protocol/proofs.py).
    acts = bf16_activations(5)
    g = torch.Generator().manual_seed(6)
    recomputed = [(a.float() * (1 + noise * torch.randn(a.shape, generator=g))).to(torch.bfloat16)
                  for a in acts]
    ours_built, theirs_built = build_proofs(acts), toploc.build_proofs_bytes(acts, 32, 128)
    ours_checked = verify_proofs(recomputed, theirs_built)
    theirs_checked = toploc.verify_proofs_bytes(recomputed, ours_built, 32, 128)
    assert same(ours_checked, theirs_checked)
    assert any(r.exp_mismatches for r in ours_checked) == (noise > 0)


def test_fp32_input_gives_toplocs_proofs_of_the_bf16_rounding():
    acts = [a.float() for a in bf16_activations(7)]
    assert build_proofs(acts) == toploc.build_proofs_bytes([a.to(torch.bfloat16) for a in acts], 32, 128)
