"""Seeded, checkable sampling: Gumbel-max with noise from a counter-based integer hash.

    token = argmax(logits / T + g),  g = -log(-log(u)),  u = uniform(seed, position, token id)

softmax(logits / T) is the distribution of that argmax (the Gumbel-max trick; exact up to the 23-bit
quantisation of u), so this is ordinary sampling, but a validator who knows the seed can recompute
the noise and check that each chosen token is the argmax of its own recomputed logits
(`check_choices`).

The uniforms are bit-identical on every device and in any language with 64-bit integers: the hash
uses only int64 ops on values below 2**49 (no overflow, no reliance on wraparound), and every right
shift is either of a non-negative value or masked to the bits a logical shift would give. u is an
exact float32. The Gumbel transform uses the device's `log`, which may differ by an ulp between
devices; the checker's margin absorbs that along with the (much larger) logit differences between
the node's and the validator's forward passes.

Position is whatever counter both sides agree on; the node uses the index of the generated token
within the completion (0 for the first). Seeds are int64 (their 64-bit pattern counts), positions
are taken mod 2**32. The hash is not cryptographic and need not be: the seed is public, and the
noise only has to look uniform.

Top-k/top-p: excluded tokens get score -inf before the argmax. A token is kept when fewer than
`top_k` tokens, holding less than `top_p` of the probability mass of softmax(logits / T), have a
strictly larger logit. Both filters read the unfiltered distribution, so they are an intersection and
their order does not matter (unlike implementations that renormalise after top-k); ties at the
boundary are all kept, so the kept set does not depend on sort order.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_DOMAIN = 0x706F746C  # "potl": keeps this stream apart from any other use of the same hash
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32 (C. Wellons), a well-tested 32-bit mixer

IntsLike = torch.Tensor | Sequence[int]


@dataclass(frozen=True)
class ChoiceCheck:
    """Per-position verdict of `check_choices`. Gaps are in logit units (score gap times T):
    0 where the chosen token is the argmax, +inf where the filter excludes it."""
    gaps: torch.Tensor  # [T] float32
    accepted: torch.Tensor  # [T] bool: gap <= margin
    worst_position: int | None  # index into the checked positions of the largest gap; None if none
    worst_gap: float

    @property
    def ok(self) -> bool:
        return bool(self.accepted.all())


def uniforms(seeds: IntsLike, positions: IntsLike, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 in (0, 1): u(seeds[b], positions[b], v) for every token id v. Runs on the
    device of `seeds` when it is a tensor."""
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    positions = torch.as_tensor(positions, dtype=torch.int64, device=seeds.device)
    if seeds.dim() != 1 or seeds.shape != positions.shape:
        raise ValueError("seeds and positions must be 1-D and of equal length")
    row = _mix32_((seeds & _MASK32) ^ _DOMAIN)
    row = _mix32_(row ^ ((seeds >> 32) & _MASK32))  # the mask undoes sign extension: the high word
    row = _mix32_(row ^ (positions & _MASK32))
    tokens = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    # Two rounds per token: neighbouring ids differ in a few low bits, and a second round of the
    # mixer spreads those differences further than one does.
    bits = _mix32_(_mix32_(row[:, None] ^ tokens[None, :]))
    # 23 bits as (2k + 1) / 2**24: exactly representable in float32, strictly inside (0, 1).
    return bits.bitwise_right_shift_(9).mul_(2).add_(1).to(torch.float32).mul_(2.0 ** -24)


def gumbel(seeds: IntsLike, positions: IntsLike, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 standard Gumbel noise, -log(-log(u))."""
    return uniforms(seeds, positions, vocab_size).log_().neg_().log_().neg_()


def scores(logits: torch.Tensor, seeds: IntsLike, positions: IntsLike, temperature: float,
           top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """[B, V] float32 noisy scores logits / T + g, -inf where top-k/top-p exclude the token."""
    _check_logits(logits, temperature)
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=logits.device)
    noisy = gumbel(seeds, positions, logits.shape[-1]).add_(logits.float() / temperature)
    keep = _keep_masks(logits, temperature, top_k, top_p, slacks=(0.0,))
    return noisy if keep is None else noisy.masked_fill(~keep[0], -math.inf)


def sample(logits: torch.Tensor, seeds: IntsLike, positions: IntsLike, temperature: float,
           top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """[B] int64 chosen token per row, for one decode step with per-row seeds and positions."""
    return scores(logits, seeds, positions, temperature, top_k, top_p).argmax(dim=-1)


def sampling_log_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                       top_p: float | None = None) -> torch.Tensor:
    """[B, V] float32 log-probabilities of the distribution `sample` draws from: softmax(logits / T)
    renormalised over the kept tokens (-inf elsewhere). The behaviour log-probs for the trainer."""
    _check_logits(logits, temperature)
    scaled = logits.float() / temperature
    keep = _keep_masks(logits, temperature, top_k, top_p, slacks=(0.0,))
    return torch.log_softmax(scaled if keep is None else scaled.masked_fill(~keep[0], -math.inf), dim=-1)


def check_choices(logits: torch.Tensor, chosen: torch.Tensor, seed: int, start_position: int,
                  temperature: float, margin: float, top_k: int | None = None,
                  top_p: float | None = None) -> ChoiceCheck:
    """Check that each chosen token is what `sample` picks from the validator's logits [T, V], for
    one rollout's `seed` and positions start_position.. start_position+T-1.

    `margin` bounds, in logit units, how far the node's logit differences (l_i - l_j) may stray from
    the validator's: at least twice the largest logit discrepancy expected between the two forward
    passes. A token is accepted when its noisy score, times T, is within margin of the best (near-ties
    can resolve either way on two machines); margin 0 demands an exact reproduction. Filtering is
    widened by the same margin: the token must be one the node could have kept, and it is compared
    only with tokens the node surely kept.
    """
    if logits.dim() != 2 or chosen.shape != logits.shape[:1]:
        raise ValueError(f"need logits [T, V] and chosen [T], got {tuple(logits.shape)} and "
                         f"{tuple(chosen.shape)}")
    if margin < 0:
        raise ValueError("margin must be non-negative")
    chosen = chosen.to(logits.device, torch.int64)
    if bool(((chosen < 0) | (chosen >= logits.shape[1])).any()):
        raise ValueError("a chosen token id is outside the vocabulary")
    count = logits.shape[0]
    positions = torch.arange(start_position, start_position + count, dtype=torch.int64,
                             device=logits.device)
    seeds = torch.full((count,), seed, dtype=torch.int64, device=logits.device)
    noisy = scores(logits, seeds, positions, temperature)
    masks = _keep_masks(logits, temperature, top_k, top_p, slacks=(margin, -margin))
    mine = noisy.gather(1, chosen[:, None]).squeeze(1)
    rivals = noisy
    if masks is not None:
        could_keep, surely_kept = masks
        mine = mine.masked_fill(~could_keep.gather(1, chosen[:, None]).squeeze(1), -math.inf)
        rivals = noisy.masked_fill(~surely_kept, -math.inf)
    # When no rival is surely kept, any token the node could have kept is acceptable (gap 0 by the
    # clamp); a chosen token scoring -inf (excluded, or a -inf logit) is never acceptable.
    gaps = ((rivals.max(dim=1).values - mine) * temperature).clamp(min=0)
    gaps = gaps.masked_fill(mine == -math.inf, math.inf)
    worst = int(gaps.argmax()) if count else None
    return ChoiceCheck(gaps, gaps <= margin, worst, float(gaps[worst]) if count else 0.0)


# In place (trailing underscore): on [batch, vocab] int64 tensors, allocating a new tensor per
# operation costs more than the arithmetic; in-place ops run about 2.4x faster on a CPU. Callers pass
# temporaries they own.
def _mul32_(x: torch.Tensor, multiplier: int) -> torch.Tensor:
    """x * multiplier mod 2**32 for x in [0, 2**32). The multiply is split at 16 bits so every
    intermediate stays below 2**49: int64 overflow is undefined in C++ and we do not rely on it."""
    high = (x >> 16).mul_(multiplier & 0xFFFF).bitwise_left_shift_(16)  # high*high vanishes mod 2**32
    return x.bitwise_and_(0xFFFF).mul_(multiplier).add_(high).bitwise_and_(_MASK32)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit values (lowbias32), so distinct token ids never share a uniform."""
    x.bitwise_xor_(x >> 16)
    _mul32_(x, _MIX_MULTIPLIERS[0])
    x.bitwise_xor_(x >> 15)
    _mul32_(x, _MIX_MULTIPLIERS[1])
    return x.bitwise_xor_(x >> 16)


def _check_logits(logits: torch.Tensor, temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError("temperature must be positive and finite")
    if logits.dim() != 2:
        raise ValueError(f"need logits [B, V], got {tuple(logits.shape)}")
    # -inf is a legitimate "never" (a masked vocabulary entry); NaN, +inf or no finite entry in a
    # row is a broken model.
    if bool((logits.isnan() | (logits == math.inf)).any() or (logits == -math.inf).all(dim=-1).any()):
        raise ValueError("logits contain NaN or +inf, or a row without a finite entry")


def _keep_masks(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                slacks: Sequence[float]) -> list[torch.Tensor] | None:
    """Tokens kept by top-k/top-p, one [B, V] mask per slack (None: no filter).

    `slack` moves the boundary in logit units: rivals count only when their logit exceeds the token's
    own by more than slack, and their mass is scaled by exp(-slack / T), the most a logit shift of
    slack can change it. slack=0 is the sampler's rule, +margin keeps every token the node could have
    kept, -margin only those it surely kept.

    Both rules become a floor per row: fewer than k tokens lie above x exactly when the k-th largest
    logit is <= x, and the mass above x stays below p exactly when fewer than n tokens lie above x,
    n being one more than the longest prefix (by logit, descending) of mass below p. So a token is
    kept when logit + slack >= floor, one comparison per token.
    """
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be at least 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if top_p == 1:
        top_p = None  # keep everything; a cumulative sum rounding to 1 could drop the tail
    if top_k is None and top_p is None:
        return None
    values = logits.float()
    batch, vocab = values.shape
    never = values.new_full((batch, 1), -math.inf)  # the floor when a rule keeps every token
    if top_p is None:
        descending = values.topk(min(top_k, vocab), dim=-1).values
    else:
        descending = values.sort(dim=-1, descending=True).values
        mass_through = torch.softmax(descending / temperature, dim=-1).cumsum(-1)
    masks = []
    for slack in slacks:
        floor = never
        if top_k is not None and top_k <= vocab:
            floor = descending[:, top_k - 1:top_k]
        if top_p is not None:
            prefix = (mass_through < top_p * math.exp(slack / temperature)).sum(-1, keepdim=True)
            floor = torch.maximum(floor, torch.cat([descending, never], -1).gather(-1, prefix))
        masks.append(values + slack >= floor)
    return masks


def rollout_seed(shard_seed: int, task_id: int, sample_index: int) -> int:
    """The seed of one rollout, derived from its shard's seed, so a lease carries one number and a
    validator can recompute every rollout's noise."""
    digest = hashlib.blake2b(f"{shard_seed}:{task_id}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # non-negative int64
