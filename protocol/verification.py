"""The validator's checks: one prefill recomputes what a node claims about its rollouts.

For a submission (a VerificationJob) the validator loads the version the rollouts claim and runs
one batched prefill over each prompt + completion (all but the last token, which is never fed
back), each distinct prompt computed once for its group (`prefill_shared`). From it, every rollout
is checked three ways:

- sampling: each token is the seeded Gumbel-max choice of the recomputed logits (protocol/sampling.py)
  within `logit_margin` (a greedy eval: the plain argmax within the margin). This is what shows the
  sequence was *sampled* from the model with the leased seed and temperature, not pasted or picked;
- logprobs: the behaviour log-probs the trainer will weigh the rollout by match log softmax(logits/T)
  within `logprob_tolerance`;
- proof: the TOPLOC commitments to the final hidden states (protocol/proofs.py) match the recomputed
  ones within TOPLOC's exponent/mantissa limits. This shows which weights computed the sequence.

The coordinator's own checks (envelope, exact reward, termination) run before, at submission.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import VerificationConfig
from .proofs import ProofFormatError, ProofThresholds, passes, split_prefill, verify_proofs_batch
from .sampling import rollout_seed, scores
from .v1 import coordinator_pb2 as pb

CHECKS = ("proof", "sampling", "logprobs")  # in the order a failure is reported
GREEDY_TEMPERATURE = 1.0  # greedy generation records log-probs of softmax(logits)
FIGURE_CAP = 1e9
DETAIL_CHARS = 240  # a verdict's detail fits the coordinator's cap on strings


@dataclass(frozen=True)
class Tolerances:
    logit_margin: float
    logprob_tolerance: float
    proof: ProofThresholds

    @classmethod
    def from_config(cls, config: VerificationConfig) -> "Tolerances":
        return cls(config.logit_margin, config.logprob_tolerance,
                   ProofThresholds(config.max_exp_mismatch_fraction, config.max_mant_err_mean,
                                   config.max_mant_err_median))


@dataclass
class Finding:
    """A rollout's figures for every check, and the first check it failed ('' if none)."""
    figures: dict[str, float] = field(default_factory=dict)
    failed: str = ""
    detail: str = ""

    def fail(self, check: str, detail: str) -> None:
        if not self.failed or CHECKS.index(check) < CHECKS.index(self.failed):
            self.failed, self.detail = check, detail


@torch.no_grad()
def prefill_shared(model, prompts: list[list[int]], continuations: list[tuple[int, list[int]]], pad_id: int,
                   max_batch_tokens: int = 65536) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [L, V] float32, final hidden states [L, H]) of prompts[p] + tokens, for each (p, tokens)
    of continuations, computing each prompt once: the G rollouts of a group share theirs, and on short completions the prompt is
    most of the work. A left-padded forward of the prompts (as the node's generation runs), their
    KV cache copied to each continuation's row, then one right-padded forward of the continuations."""
    device = next(model.parameters()).device
    rows_of: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(continuations):
        rows_of.setdefault(p, []).append(i)
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(continuations)
    pending = list(rows_of)
    while pending:
        batch: list[int] = []
        while pending and (not batch or _batch_tokens(prompts, continuations, rows_of, batch + pending[:1])
                           <= max_batch_tokens):
            batch.append(pending.pop(0))
        rows = [i for p in batch for i in rows_of[p]]
        owners = [k for k, p in enumerate(batch) for _ in rows_of[p]]  # each row's prompt, in the batch
        width = max(len(prompts[p]) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, p in enumerate(batch):
            ids[k, width - len(prompts[p]):] = torch.tensor(prompts[p], dtype=torch.long)
            mask[k, width - len(prompts[p]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    output_hidden_states=True)
        prompt_logits, prompt_hidden = out.logits.float().cpu(), out.hidden_states[-1].cpu()
        extra = max(len(continuations[i][1]) for i in rows)
        if extra:
            owner_index = torch.tensor(owners, dtype=torch.long, device=device)
            cache = out.past_key_values
            cache.reorder_cache(owner_index)
            more = torch.full((len(rows), extra), pad_id, dtype=torch.long)
            more_mask = torch.zeros((len(rows), extra), dtype=torch.long)
            for r, i in enumerate(rows):
                tokens = continuations[i][1]
                more[r, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                more_mask[r, :len(tokens)] = 1
            more_positions = positions[owner_index, -1:] + 1 + torch.arange(extra, device=device)
            out = model(input_ids=more.to(device), past_key_values=cache, position_ids=more_positions,
                        attention_mask=torch.cat([mask[owner_index], more_mask.to(device)], dim=-1),
                        use_cache=True, output_hidden_states=True)
            more_logits, more_hidden = out.logits.float().cpu(), out.hidden_states[-1].cpu()
        for r, (i, k) in enumerate(zip(rows, owners)):
            length, count = len(prompts[batch[k]]), len(continuations[i][1])
            logits, hidden = prompt_logits[k, width - length:], prompt_hidden[k, width - length:]
            if count:
                logits = torch.cat([logits, more_logits[r, :count]])
                hidden = torch.cat([hidden, more_hidden[r, :count]])
            results[i] = (logits, hidden)
    return results  # type: ignore[return-value]


def _batch_tokens(prompts, continuations, rows_of, batch: list[int]) -> int:
    """Padded tokens of the continuation forward for these prompts (it dominates the prompts' own)."""
    rows = [i for p in batch for i in rows_of[p]]
    return len(rows) * (max(len(prompts[p]) for p in batch) + max(len(continuations[i][1]) for i in rows))


def _check_tokens(findings: list[Finding], logits: list[torch.Tensor], rollouts: list[pb.Rollout],
                  seeds: list[int], sampling: pb.SamplingParams, tol: Tolerances) -> None:
    """Sampling and log-prob checks of every rollout at once (logits[i]: rollout i's completion
    positions). Row for row the same arithmetic as `check_choices` per rollout (the seeded scores
    of protocol/sampling.py, positions from 0), batched: per-rollout calls cost more than the math."""
    counts = [len(r.completion_ids) for r in rollouts]
    chosen = torch.tensor([t for r in rollouts for t in r.completion_ids], dtype=torch.int64)
    everything = torch.cat(logits)
    if bool(((chosen < 0) | (chosen >= everything.shape[1])).any()):
        raise ValueError("a chosen token id is outside the vocabulary")
    if sampling.greedy:
        temperature = GREEDY_TEMPERATURE
        gaps = everything.max(dim=-1).values - everything.gather(1, chosen[:, None]).squeeze(1)
    else:
        temperature = sampling.temperature
        positions = torch.cat([torch.arange(count, dtype=torch.int64) for count in counts])
        noisy = scores(everything, torch.tensor(seeds, dtype=torch.int64).repeat_interleave(torch.tensor(counts)),
                       positions, temperature)
        mine = noisy.gather(1, chosen[:, None]).squeeze(1)
        gaps = ((noisy.max(dim=1).values - mine) * temperature).clamp(min=0)
        gaps = gaps.masked_fill(mine == -math.inf, math.inf)  # a token the scores exclude
    recomputed = torch.log_softmax(everything / temperature, dim=-1).gather(1, chosen[:, None]).squeeze(1)
    errors = (recomputed - torch.tensor([lp for r in rollouts for lp in r.logprobs])).abs()
    for finding, gap, error in zip(findings, _per_rollout_max(gaps, counts), _per_rollout_max(errors, counts)):
        finding.figures["sampling_gap"] = gap
        if not gap <= tol.logit_margin:
            finding.fail("sampling", f"a token is not the seeded choice: its score is {gap:.4g} logits "
                                     f"below the best (margin {tol.logit_margin})")
        finding.figures["logprob_error"] = error
        if not error <= tol.logprob_tolerance:
            finding.fail("logprobs", f"a behaviour log-prob is off by {error:.4g} (tolerance {tol.logprob_tolerance})")


def _per_rollout_max(values: torch.Tensor, counts: list[int]) -> list[float]:
    """The largest of each rollout's run of non-negative values (NaN if any is NaN; 0 if none)."""
    rows = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    columns = torch.cat([torch.arange(count) for count in counts])
    table = values.new_zeros((len(counts), max(counts, default=0) or 1))
    table[rows, columns] = values
    return table.max(dim=1).values.tolist()


def _check_proofs(finding: Finding, results, tol: Tolerances) -> None:
    if isinstance(results, ProofFormatError):
        finding.figures["proof_exp_mismatch"] = 1.0
        finding.fail("proof", f"malformed proofs: {results}")
        return
    worst = max(results, key=lambda r: (not passes(r, tol.proof), r.exp_mismatches / r.points))
    finding.figures["proof_exp_mismatch"] = worst.exp_mismatches / worst.points
    finding.figures["proof_mant_err_mean"] = worst.mant_err_mean
    if not passes(worst, tol.proof):
        finding.fail("proof", f"hidden states do not match the proof: {worst.exp_mismatches}/{worst.points} "
                              f"exponents differ, mantissa error mean {worst.mant_err_mean:.3g} median "
                              f"{worst.mant_err_median:.3g}")


def check_job(model, tokenizer, job: pb.VerificationJob, tol: Tolerances) -> list[Finding]:
    """One Finding per rollout of the job, in the job's order."""
    prompt_ids = {p.task_id: tokenizer(p.text)["input_ids"] for p in job.prompts}
    rollouts = list(job.rollouts)
    prompt_of = {task_id: n for n, task_id in enumerate(prompt_ids)}
    forwards = prefill_shared(model, list(prompt_ids.values()),
                              [(prompt_of[r.task_id], list(r.completion_ids)[:-1]) for r in rollouts],
                              tokenizer.pad_token_id)
    activations = [split_prefill(hidden, len(prompt_ids[r.task_id])) for r, (_, hidden) in zip(rollouts, forwards)]
    proof_results = verify_proofs_batch(activations, [list(r.proofs) for r in rollouts])
    findings = [Finding() for _ in rollouts]
    # Position t predicts token t+1: the completion's logits start at the prompt's last position.
    _check_tokens(findings, [logits[len(prompt_ids[r.task_id]) - 1:] for r, (logits, _) in zip(rollouts, forwards)],
                  rollouts, [rollout_seed(job.seed, r.task_id, r.sample_index) for r in rollouts], job.sampling, tol)
    for finding, proofs in zip(findings, proof_results):
        _check_proofs(finding, proofs, tol)
    return findings


def verdict(job: pb.VerificationJob, findings: list[Finding]) -> pb.Verdict:
    """The job's verdict: rejected with the first failing rollout's check, and the worst figures."""
    figures: dict[str, float] = {}
    for finding in findings:
        for name, value in finding.figures.items():
            # Capped: a verdict travels in a message whose numbers must be finite (inf: "no match at all").
            figures[name] = max(figures.get(name, -math.inf), min(value, FIGURE_CAP))
    failing = [(r, f) for r, f in zip(job.rollouts, findings) if f.failed]
    if not failing:
        return pb.Verdict(job_id=job.job_id, accepted=True, figures=figures)
    rollout, finding = failing[0]
    return pb.Verdict(job_id=job.job_id, accepted=False, check=finding.failed,
                      detail=(f"{len(failing)} of {len(findings)} rollouts fail; task {rollout.task_id} sample "
                              f"{rollout.sample_index}: {finding.detail}")[:DETAIL_CHARS],
                      figures=figures, task_id=rollout.task_id, sample_index=rollout.sample_index)


def verify_job(model, tokenizer, job: pb.VerificationJob, tol: Tolerances) -> pb.Verdict:
    return verdict(job, check_job(model, tokenizer, job, tol))
