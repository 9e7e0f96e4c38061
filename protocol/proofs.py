"""TOPLOC-style hidden-state proofs (arXiv 2501.16007), byte-compatible with the `toploc` 0.1.6 package.

A node commits to the final hidden states it computed while generating; a validator recomputes them
in one prefill and checks the commitment within tolerances.

Activations are the prompt block (all prompt positions, any shape) followed by one vector per decode
step. They are cut into chunks: the prompt block alone (unless `skip_prefill`), then the decode
vectors `decode_batching_size` at a time, each chunk flattened. A 2-D+ tensor counts as the list of
its rows (dim 0), as in toploc.

Per chunk, the proof is the `topk` values of largest magnitude, as a polynomial over GF(65497):

    bytes = modulus (u16 big-endian) || c_0 .. c_{k-1} (u16 big-endian each)

with P(x) = sum c_i x^i satisfying P(index mod modulus) = bf16 bit pattern of the value, for each
selected (flat index, value). The modulus is the largest m <= 65497 for which `index mod m` is
injective on the selected indices (65497 unless two indices differ by a multiple of it). At k=128 a
proof is 258 bytes.

Precision: every value is rounded to bf16 (round-to-nearest-even) before selection, so fp32 and fp16
activations give the proof of their bf16 rounding; toploc itself takes bf16 only. Selection runs on
the CPU so ties resolve the same wherever the activations were computed.

Where we deliberately differ from toploc 0.1.6 (the bytes of an honest proof are the same):
- A chunk with fewer than `topk` values commits to all of them (k = chunk size, a shorter proof);
  toploc fails on such chunks. Thresholds on exponent mismatches are fractions of k for this reason.
- Errors raise (`ValueError`, `ProofFormatError`) instead of yielding null proofs or silently
  verifying fewer proofs than chunks.
- Verification evaluates P at `index mod modulus`, what the prover interpolated; toploc evaluates at
  the raw index, which disagrees whenever the modulus is not 65497.
- When no exponent matches, the mantissa statistics are +inf (toploc: 2**64).
Like toploc, the check compares exponent and mantissa bits only, not the sign.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

PRIME = 65497  # the field toploc interpolates in; largest modulus it tries
_EXP_MASK, _EXP_SHIFT, _MANT_MASK = 0x7F80, 7, 0x7F  # bf16: 1 sign, 8 exponent, 7 mantissa bits
_SUPPORTED = (torch.bfloat16, torch.float16, torch.float32)

Activations = torch.Tensor | Sequence[torch.Tensor]


class ProofFormatError(ValueError):
    """A proof, or the list of proofs, is malformed: the validator should reject the rollout."""


@dataclass(frozen=True)
class ProofResult:
    exp_mismatches: int  # selected values whose bf16 exponent differs from the committed one
    mant_err_mean: float  # mean |mantissa difference| (7-bit units) over exponent matches
    mant_err_median: float  # median of the same (mean of the middle two for an even count)
    points: int  # values compared: min(topk, chunk size)


@dataclass(frozen=True)
class ProofThresholds:
    """Pass limits. Defaults are TOPLOC's published ones: <= 90 of 128 exponent mismatches, mantissa
    error mean <= 10 and median <= 8. The exponent limit is a fraction so clamped chunks scale."""
    max_exp_mismatch_fraction: float = 90 / 128
    max_mant_err_mean: float = 10.0
    max_mant_err_median: float = 8.0


def passes(result: ProofResult, thresholds: ProofThresholds = ProofThresholds()) -> bool:
    return (result.exp_mismatches <= thresholds.max_exp_mismatch_fraction * result.points
            and result.mant_err_mean <= thresholds.max_mant_err_mean
            and result.mant_err_median <= thresholds.max_mant_err_median)


def split_prefill(hidden: torch.Tensor, prompt_len: int) -> list[torch.Tensor]:
    """A validator's one-prefill hidden states [L, H] as activations: the prompt block, then one
    vector per later position. Pass only the positions the node proved (see its decode steps)."""
    if hidden.dim() != 2 or not 0 < prompt_len <= hidden.shape[0]:
        raise ValueError(f"need hidden states [L, H] with 0 < prompt_len <= L, got {tuple(hidden.shape)}"
                         f" and prompt_len={prompt_len}")
    return [hidden[:prompt_len], *hidden[prompt_len:]]


def build_proofs(activations: Activations, decode_batching_size: int = 32, topk: int = 128,
                 skip_prefill: bool = False) -> list[bytes]:
    """One proof per chunk (see the module docstring)."""
    return [_prove(chunk, topk) for chunk in _chunks(activations, decode_batching_size, topk, skip_prefill)]


def verify_proofs(activations: Activations, proofs: Sequence[bytes], decode_batching_size: int = 32,
                  topk: int = 128, skip_prefill: bool = False) -> list[ProofResult]:
    """Compare recomputed activations with a node's proofs, one result per chunk. Raises
    ProofFormatError when the proofs cannot be the ones these settings produce."""
    chunks = _chunks(activations, decode_batching_size, topk, skip_prefill)
    if len(proofs) != len(chunks):
        raise ProofFormatError(f"expected {len(chunks)} proofs for these activations, got {len(proofs)}")
    return [_check(chunk, proof, topk) for chunk, proof in zip(chunks, proofs)]


def _chunks(activations: Activations, decode_batching_size: int, topk: int,
            skip_prefill: bool) -> list[torch.Tensor]:
    if decode_batching_size < 1 or topk < 1:
        raise ValueError("decode_batching_size and topk must be positive")
    if isinstance(activations, torch.Tensor) and activations.dim() < 2:
        raise ValueError("an activations tensor needs a leading dimension of positions (rows)")
    rows = [_as_bf16(row) for row in activations]
    if not rows:
        raise ValueError("no activations to prove")
    chunks = [] if skip_prefill else [rows[0]]
    decode = rows if skip_prefill else rows[1:]
    step = decode_batching_size
    return chunks + [torch.cat(decode[i:i + step]) for i in range(0, len(decode), step)]


def _as_bf16(row: torch.Tensor) -> torch.Tensor:
    if row.dtype not in _SUPPORTED:
        raise TypeError(f"activations must be bfloat16, float16 or float32, got {row.dtype}")
    if row.numel() == 0:
        raise ValueError("an activation row is empty")
    flat = row.detach().reshape(-1).to("cpu", torch.bfloat16)
    # Non-finite values mean a broken model, and some NaN bit patterns exceed the field.
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("activations contain NaN or infinity")
    return flat


def _select(chunk: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the k largest magnitudes (torch's CPU topk, as toploc) and their bf16 bits."""
    indices = chunk.abs().topk(min(topk, chunk.numel())).indices
    bits = chunk[indices].view(torch.int16).to(torch.int64) & 0xFFFF
    return indices, bits


def _prove(chunk: torch.Tensor, topk: int) -> bytes:
    indices, bits = _select(chunk, topk)
    modulus = _injective_modulus(indices.tolist())
    coeffs = _interpolate(indices.numpy() % modulus, bits.numpy())
    return np.array([modulus, *coeffs], dtype=">u2").tobytes()


def _check(chunk: torch.Tensor, proof: bytes, topk: int) -> ProofResult:
    indices, bits = _select(chunk, topk)
    modulus, coeffs = _decode(proof, indices.numel())
    committed = torch.from_numpy(_evaluate(coeffs, indices.numpy() % modulus))
    exp_match = (committed & _EXP_MASK) >> _EXP_SHIFT == (bits & _EXP_MASK) >> _EXP_SHIFT
    mant_errs = ((committed & _MANT_MASK) - (bits & _MANT_MASK)).abs()[exp_match].tolist()
    if not mant_errs:
        return ProofResult(indices.numel(), math.inf, math.inf, indices.numel())
    return ProofResult(indices.numel() - len(mant_errs), sum(mant_errs) / len(mant_errs),
                       float(statistics.median(mant_errs)), indices.numel())


def _decode(proof: bytes, points: int) -> tuple[int, np.ndarray]:
    """(modulus, coefficients) of a proof that must hold `points` coefficients; the length is
    checked before anything is parsed, so an oversized proof costs nothing."""
    if not isinstance(proof, bytes | bytearray) or len(proof) != 2 + 2 * points:
        raise ProofFormatError(f"a proof here is {2 + 2 * points} bytes (modulus and {points} coefficients)")
    words = np.frombuffer(proof, dtype=">u2").astype(np.int64)
    modulus, coeffs = int(words[0]), words[1:]
    if not 0 < modulus <= PRIME or bool((coeffs >= PRIME).any()):
        raise ProofFormatError(f"proof modulus {modulus} or a coefficient is outside the field")
    return modulus, coeffs


def _injective_modulus(indices: list[int]) -> int:
    # Same search as toploc: part of the byte format, since the modulus is the proof's first word.
    for modulus in range(PRIME, len(indices) - 1, -1):
        if len({i % modulus for i in indices}) == len(indices):
            return modulus
    raise ValueError("no modulus separates the selected indices")


# The field arithmetic runs in numpy: on 128-element vectors its per-call overhead is ~5x below torch's.
@cache
def _inverses() -> np.ndarray:
    """a^-1 mod PRIME for every a (index 0 unused), by Fermat: a^(p-2), square-and-multiply."""
    base, result, exponent = np.arange(PRIME, dtype=np.int64), np.ones(PRIME, dtype=np.int64), PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base, exponent = base * base % PRIME, exponent >> 1
    return result


def _interpolate(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coefficients (ascending) of the unique polynomial of degree < n through n points with distinct
    xs, over GF(PRIME). Uniqueness is why any correct method matches toploc's bytes. Values stay below
    PRIME, so every product fits easily in int64."""
    n, inverse = xs.size, _inverses()
    diffs = ys % PRIME  # Newton divided differences, one order per pass (right side read before write)
    for order in range(1, n):
        step = inverse[(xs[order:] - xs[:-order]) % PRIME]
        diffs[order:] = (diffs[order:] - diffs[order - 1:-1]) % PRIME * step % PRIME
    coeffs = np.zeros(n, dtype=np.int64)
    basis = np.zeros(n, dtype=np.int64)  # prod_{j<i} (x - x_j), ascending coefficients
    basis[0] = 1
    for i in range(n):
        coeffs = (coeffs + diffs[i] * basis) % PRIME
        product = (PRIME - xs[i]) * basis
        product[1:] += basis[:-1]  # + x * basis
        basis = product % PRIME
    return coeffs


def _evaluate(coeffs: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Horner's rule at every x (each below PRIME) at once."""
    result = np.zeros_like(xs)
    for c in coeffs[::-1]:
        result = (result * xs + c) % PRIME
    return result
