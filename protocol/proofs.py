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

Many sequences at once: build_proofs_batch and verify_proofs_batch give exactly what build_proofs
and verify_proofs give one sequence at a time (those are the batch of one), at a small fraction of
the cost for short rollouts: chunks of one size share one topk call, and proofs of one point count
are interpolated or evaluated together, in exact float64 arithmetic. A validator gets a malformed
proof back as that sequence's ProofFormatError, the other sequences checked as usual.

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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

PRIME = 65497  # the field toploc interpolates in; largest modulus it tries
_EXP_MASK, _MANT_MASK = 0x7F80, 0x7F  # bf16: 1 sign, 8 exponent, 7 mantissa bits
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
    return build_proofs_batch([activations], decode_batching_size, topk, skip_prefill)[0]


def verify_proofs(activations: Activations, proofs: Sequence[bytes], decode_batching_size: int = 32,
                  topk: int = 128, skip_prefill: bool = False) -> list[ProofResult]:
    """Compare recomputed activations with a node's proofs, one result per chunk. Raises
    ProofFormatError when the proofs cannot be the ones these settings produce."""
    results = verify_proofs_batch([activations], [proofs], decode_batching_size, topk, skip_prefill)[0]
    if isinstance(results, ProofFormatError):
        raise results
    return results


def build_proofs_batch(sequences: Sequence[Activations], decode_batching_size: int = 32, topk: int = 128,
                       skip_prefill: bool = False) -> list[list[bytes]]:
    """build_proofs for each sequence, byte for byte, at a fraction of the cost: chunks of one size
    are selected together and proofs of one point count are interpolated together. Bad activations
    raise (ValueError, TypeError) with the sequence's position in the message."""
    batch = _Batch(sequences, decode_batching_size, topk, skip_prefill)
    proofs = [b""] * len(batch.sizes)
    sources = batch.first_copies()
    for positions, indices, bits in batch.selections(set(sources)):
        moduli = _moduli(indices)
        coeffs = _interpolate(indices % moduli[:, None], bits)
        words = np.concatenate([moduli[:, None], coeffs], axis=1).astype(">u2")
        for position, row in zip(positions, words):
            proofs[position] = row.tobytes()
    for position, source in enumerate(sources):
        proofs[position] = proofs[source]
    return batch.per_sequence(proofs)


def verify_proofs_batch(sequences: Sequence[Activations], proofs_per_sequence: Sequence[Sequence[bytes]],
                        decode_batching_size: int = 32, topk: int = 128, skip_prefill: bool = False
                        ) -> list[list[ProofResult] | ProofFormatError]:
    """verify_proofs for each sequence, the same results. A sequence whose proofs are malformed gets
    its ProofFormatError (naming its first bad proof) in place of its results, so a validator rejects
    that rollout alone and the others are still checked. The activations are the validator's own:
    bad ones raise as in build_proofs_batch."""
    if len(proofs_per_sequence) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(proofs_per_sequence)} lists of proofs")
    batch = _Batch(sequences, decode_batching_size, topk, skip_prefill)
    flaws: dict[int, tuple[int, str]] = {}  # sequence -> (position, reason) of its first malformed proof

    def flaw(number: int, position: int, reason: str) -> None:
        if flaws.get(number, (math.inf,))[0] > position:
            flaws[number] = (position, reason)

    given: list[bytes | None] = [None] * len(batch.sizes)  # None: missing or of the wrong length
    for number, proofs in enumerate(proofs_per_sequence):
        start, end = batch.starts[number], batch.starts[number + 1]
        if len(proofs) != end - start:
            flaw(number, -1, f"expected {end - start} proofs for these activations, got {len(proofs)}")
            continue
        for offset, proof in enumerate(proofs):
            points = batch.points(start + offset)
            if isinstance(proof, bytes | bytearray) and len(proof) == 2 + 2 * points:
                given[start + offset] = bytes(proof)
            else:  # the length is checked before anything is parsed, so an oversized proof costs nothing
                flaw(number, start + offset, f"proof {offset}: a proof here is {2 + 2 * points} bytes"
                                             f" (modulus and {points} coefficients)")

    results: list[ProofResult | None] = [None] * len(batch.sizes)
    for positions, indices, bits in batch.selections():
        points = indices.shape[1]
        stand_in = PRIME.to_bytes(2, "big") + bytes(2 * points)  # evaluated, never reported
        words = np.frombuffer(b"".join(given[p] or stand_in for p in positions), dtype=">u2")
        words = words.reshape(len(positions), points + 1).astype(np.int64)
        moduli, coeffs = words[:, 0], words[:, 1:]
        outside = (moduli == 0) | (moduli > PRIME) | (coeffs >= PRIME).any(axis=1)
        for row in np.flatnonzero(outside).tolist():
            number = batch.owners[positions[row]]
            flaw(number, positions[row], f"proof {positions[row] - batch.starts[number]}: modulus"
                                         f" {moduli[row]} or a coefficient is outside the field")
        moduli[outside] = PRIME
        committed = _evaluate(coeffs, indices % moduli[:, None])
        for position, result in zip(positions, _compare(committed, bits)):
            results[position] = result
    return [ProofFormatError(flaws[number][1]) if number in flaws else chunk_results
            for number, chunk_results in enumerate(batch.per_sequence(results))]


class _Batch:
    """The chunks of many sequences, in order, each as its flattened rows (converted when selected)."""

    def __init__(self, sequences: Sequence[Activations], decode_batching_size: int, topk: int,
                 skip_prefill: bool):
        if decode_batching_size < 1 or topk < 1:
            raise ValueError("decode_batching_size and topk must be positive")
        self.topk = topk
        self.chunks: list[list[torch.Tensor]] = []
        self.owners: list[int] = []  # the sequence of each chunk
        self.starts = [0]  # sequence i has chunks starts[i]:starts[i + 1]
        for number, activations in enumerate(sequences):
            try:
                chunks = _chunks(activations, decode_batching_size, skip_prefill)
            except (TypeError, ValueError) as error:
                raise type(error)(f"sequence {number}: {error}") from error
            self.chunks += chunks
            self.owners += [number] * len(chunks)
            self.starts.append(len(self.chunks))
        self.sizes = [sum(row.numel() for row in chunk) for chunk in self.chunks]

    def points(self, position: int) -> int:
        return min(self.topk, self.sizes[position])

    def per_sequence(self, flat: list) -> list[list]:
        return [flat[start:end] for start, end in zip(self.starts, self.starts[1:])]

    def first_copies(self) -> list[int]:
        """For each chunk, the first chunk of identical values (itself if none): a group's rollouts
        share their prompt block, and identical values have the same proof, so it is built once."""
        first: dict[tuple, int] = {}
        return [first.setdefault((tuple(row.dtype for row in chunk),
                                  b"".join(row.contiguous().view(torch.uint8).numpy().tobytes() for row in chunk)),
                                 position)
                for position, chunk in enumerate(self.chunks)]

    def selections(self, wanted: set[int] | None = None) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """Per point count k: (chunk positions, flat indices [n, k] of the k largest magnitudes, their
        bf16 bits [n, k]). The choice among equal magnitudes is part of the byte format: it is torch's
        CPU topk, as in toploc, which runs the same selection on each row of a [n, size] matrix as on
        a chunk alone, so chunks of one size share a call. It runs on magnitude bits as int16, which
        order and tie exactly as the bf16 magnitudes (finite values), and unsorted, which skips only
        a sort of the selection; both faster, neither changes the indices (tests compare). On the CPU
        so ties resolve the same wherever the activations were computed. Only the chunks in `wanted`
        (all when None)."""
        by_size: dict[int, list[int]] = {}
        for position, size in enumerate(self.sizes):
            if wanted is None or position in wanted:
                by_size.setdefault(size, []).append(position)
        by_points: dict[int, list[tuple[list[int], np.ndarray, np.ndarray]]] = {}
        for size, positions in by_size.items():
            values = torch.cat([row for p in positions for row in self.chunks[p]]).to(torch.bfloat16)
            words = values.view(torch.int16).view(len(positions), size)
            magnitudes = words & 0x7FFF
            nonfinite = (magnitudes >= _EXP_MASK).any(dim=1)  # exponent all ones: inf or NaN
            if bool(nonfinite.any()):  # a broken model; some NaN bit patterns also exceed the field
                number = self.owners[positions[int(nonfinite.nonzero()[0])]]
                raise ValueError(f"sequence {number}: activations contain NaN or infinity")
            indices = magnitudes.topk(min(self.topk, size), sorted=False).indices
            bits = words.gather(1, indices).numpy().astype(np.int64) & 0xFFFF
            by_points.setdefault(indices.shape[1], []).append((positions, indices.numpy(), bits))
        return [([p for part in parts for p in part[0]], np.concatenate([part[1] for part in parts]),
                 np.concatenate([part[2] for part in parts])) for parts in by_points.values()]


def _chunks(activations: Activations, decode_batching_size: int,
            skip_prefill: bool) -> list[list[torch.Tensor]]:
    if isinstance(activations, torch.Tensor) and activations.dim() < 2:
        raise ValueError("an activations tensor needs a leading dimension of positions (rows)")
    rows = [_flat(row) for row in activations]
    if not rows:
        raise ValueError("no activations to prove")
    decode = rows if skip_prefill else rows[1:]
    step = decode_batching_size
    return ([] if skip_prefill else [rows[:1]]) + [decode[i:i + step] for i in range(0, len(decode), step)]


def _flat(row: torch.Tensor) -> torch.Tensor:
    if row.dtype not in _SUPPORTED:
        raise TypeError(f"activations must be bfloat16, float16 or float32, got {row.dtype}")
    if row.numel() == 0:
        raise ValueError("an activation row is empty")
    return row.detach().reshape(-1).cpu()


def _compare(committed: np.ndarray, bits: np.ndarray) -> list[ProofResult]:
    """Row by row [n, k]: the committed bf16 bits against the recomputed ones."""
    exp_match = (committed & _EXP_MASK) == (bits & _EXP_MASK)
    errors = np.abs((committed & _MANT_MASK) - (bits & _MANT_MASK))
    matches = exp_match.sum(axis=1)
    totals = np.where(exp_match, errors, 0).sum(axis=1)
    ordered = np.sort(np.where(exp_match, errors, _MANT_MASK + 1), axis=1)  # the matched errors first
    rows = np.arange(len(ordered))
    lows, highs = ordered[rows, np.maximum(matches - 1, 0) // 2], ordered[rows, matches // 2]
    points = committed.shape[1]
    return [ProofResult(points - count, total / count, (low + high) / 2, points) if count else
            ProofResult(points, math.inf, math.inf, points)
            for count, total, low, high in zip(*(a.tolist() for a in (matches, totals, lows, highs)))]


def _moduli(indices: np.ndarray) -> np.ndarray:
    """The modulus of each row of selected indices [n, k]: below PRIME, indices cannot collide."""
    moduli = np.full(len(indices), PRIME, dtype=np.int64)
    for row in np.flatnonzero(indices.max(axis=1) >= PRIME).tolist():
        moduli[row] = _injective_modulus(indices[row].tolist())
    return moduli


def _injective_modulus(indices: list[int]) -> int:
    # Same search as toploc: part of the byte format, since the modulus is the proof's first word.
    for modulus in range(PRIME, len(indices) - 1, -1):
        if len({i % modulus for i in indices}) == len(indices):
            return modulus
    raise ValueError("no modulus separates the selected indices")


# The field arithmetic holds exact integers in float64 (numpy): multiplying by a rounded-up 1/PRIME
# and flooring is several times faster than an integer or float `%` there, and exact for every
# 0 <= a < 2**51 (shown in tests), so products of field elements can pile up a little between
# reductions.
_INV_PRIME = float(np.nextafter(1 / PRIME, 1))


def _reduce(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """values mod PRIME (into `out`, else in place) for exact integers 0 <= values < 2**51 in float64."""
    quotients = values * _INV_PRIME
    np.floor(quotients, out=quotients)
    quotients *= PRIME
    return np.subtract(values, quotients, out=values if out is None else out)


@cache
def _inverses() -> np.ndarray:
    """a^-1 mod PRIME for every a (index 0 unused) as float64, by Fermat: a^(p-2), square-and-multiply."""
    base, result, exponent = np.arange(PRIME, dtype=np.int64), np.ones(PRIME, dtype=np.int64), PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base, exponent = base * base % PRIME, exponent >> 1
    return result.astype(np.float64)


def _interpolate(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Row by row [n, k]: coefficients (ascending) of the unique polynomial of degree < k through the
    points (xs, ys), xs distinct in each row and below PRIME, over GF(PRIME). Uniqueness is why any
    correct method matches toploc's bytes."""
    # Points ascending (differences below are positive: numpy gathers those several times faster),
    # and transposed to [k, n], so that every slice below is one contiguous block.
    ascending = np.argsort(xs, axis=1)
    xs = np.take_along_axis(xs, ascending, axis=1).T.copy()
    ys = np.take_along_axis(ys, ascending, axis=1).T.astype(np.float64, order="C")
    k, n = xs.shape
    inverse = _inverses()
    diffs = _reduce(ys)  # Newton divided differences, one order per pass
    for order in range(1, k):
        change = diffs[order:] - diffs[order - 1:-1]
        change += PRIME  # now in [1, 2 PRIME), times an inverse: below 2**33
        change *= inverse.take(xs[order:] - xs[:-order])
        _reduce(change, out=diffs[order:])
    # Expand d_0 + (x - x_0)(d_1 + (x - x_1)(d_2 + ...)) from the inside out. A step multiplies by
    # PRIME - x_i <= 2**16: from reduced values two steps stay below 2**50, so reduce every other.
    minus_xs = (PRIME - xs).astype(np.float64)
    poly, spare = np.zeros((k, n)), np.zeros((k, n))
    poly[0] = diffs[k - 1]
    for i in range(k - 2, -1, -1):
        width = k - i  # coefficients after this step; poly[width - 1] is still 0
        np.multiply(poly[:width], minus_xs[i], out=spare[:width])
        spare[1:width] += poly[:width - 1]
        spare[0] += diffs[i]
        poly, spare = spare, poly
        if i % 2 == 0:  # i = 0 included: the result is reduced
            _reduce(poly[:width])
    return poly.T.astype(np.int64)


def _evaluate(coeffs: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Row by row [n, k]: Horner's rule at every x (each below PRIME) at once, reducing every other
    step (reduced value times x plus coefficient, twice, stays below 2**49). Transposed to [k, n]
    inside, so that the coefficient added at each step is one contiguous row."""
    xs, coeffs = xs.T.astype(np.float64, order="C"), coeffs.T.astype(np.float64, order="C")
    result = np.zeros(xs.shape)
    for j in range(len(coeffs) - 1, -1, -1):
        result *= xs
        result += coeffs[j]
        if j % 2 == 0:
            _reduce(result)
    return result.T.astype(np.int64)
