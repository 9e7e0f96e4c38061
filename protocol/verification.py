"""The validator's checks: one prefill recomputes what a node claims about its rollouts.

For a submission (a VerificationJob) the validator loads the version the rollouts claim and runs
one batched prefill over each prompt + completion (all but the last token, which is never fed
back). From it, every rollout is checked three ways:

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
from .sampling import check_choices, rollout_seed
from .v1 import coordinator_pb2 as pb

CHECKS = ("proof", "sampling", "logprobs")  # in the order a failure is reported
GREEDY_TEMPERATURE = 1.0  # greedy generation records log-probs of softmax(logits)


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
def prefill(model, sequences: list[list[int]], pad_id: int, max_batch_tokens: int = 65536
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits [L, V] float32, final hidden states [L, H]) for each sequence, from right-padded
    batched forwards of at most max_batch_tokens padded tokens."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths together
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(sequences)
    start = 0
    while start < len(order):
        width = len(sequences[order[start]])
        end = start + 1
        while end < len(order) and (end - start + 1) * len(sequences[order[end]]) <= max_batch_tokens:
            end += 1
        rows = order[start:end]
        width = max(len(sequences[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
            mask[r, :len(sequences[i])] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        logits, hidden = out.logits.float().cpu(), out.hidden_states[-1].cpu()
        for r, i in enumerate(rows):
            results[i] = (logits[r, :len(sequences[i])], hidden[r, :len(sequences[i])])
        start = end
    return results  # type: ignore[return-value]


def _check_tokens(finding: Finding, logits: torch.Tensor, rollout: pb.Rollout, seed: int,
                  sampling: pb.SamplingParams, tol: Tolerances) -> None:
    chosen = torch.tensor(list(rollout.completion_ids), dtype=torch.int64)
    if sampling.greedy:
        gaps = logits.max(dim=-1).values - logits.gather(1, chosen[:, None]).squeeze(1)
        worst = float(gaps.max())
        temperature = GREEDY_TEMPERATURE
    else:
        verdict = check_choices(logits, chosen, seed, 0, sampling.temperature, tol.logit_margin)
        worst = verdict.worst_gap
        temperature = sampling.temperature
    finding.figures["sampling_gap"] = worst
    if not worst <= tol.logit_margin:
        finding.fail("sampling", f"a token is not the seeded choice: its score is {worst:.4g} logits "
                                 f"below the best (margin {tol.logit_margin})")
    recomputed = torch.log_softmax(logits / temperature, dim=-1).gather(1, chosen[:, None]).squeeze(1)
    error = float((recomputed - torch.tensor(list(rollout.logprobs))).abs().max())
    finding.figures["logprob_error"] = error
    if not error <= tol.logprob_tolerance:
        finding.fail("logprobs", f"a behaviour log-prob is off by {error:.4g} (tolerance {tol.logprob_tolerance})")


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
    forwards = prefill(model, [prompt_ids[r.task_id] + list(r.completion_ids)[:-1] for r in rollouts],
                       tokenizer.pad_token_id)
    activations = [split_prefill(hidden, len(prompt_ids[r.task_id])) for r, (_, hidden) in zip(rollouts, forwards)]
    proof_results = verify_proofs_batch(activations, [list(r.proofs) for r in rollouts])
    findings = []
    for r, (logits, _), proofs in zip(rollouts, forwards, proof_results):
        finding = Finding()
        prompt_len = len(prompt_ids[r.task_id])
        # Position t predicts token t+1: the completion's logits start at the prompt's last position.
        _check_tokens(finding, logits[prompt_len - 1:], r, rollout_seed(job.seed, r.task_id, r.sample_index),
                      job.sampling, tol)
        _check_proofs(finding, proofs, tol)
        findings.append(finding)
    return findings


def verdict(job: pb.VerificationJob, findings: list[Finding]) -> pb.Verdict:
    """The job's verdict: rejected with the first failing rollout's check, and the worst figures."""
    figures: dict[str, float] = {}
    for finding in findings:
        for name, value in finding.figures.items():
            figures[name] = max(figures.get(name, -math.inf), value)
    failing = [(r, f) for r, f in zip(job.rollouts, findings) if f.failed]
    if not failing:
        return pb.Verdict(job_id=job.job_id, accepted=True, figures=figures)
    rollout, finding = failing[0]
    return pb.Verdict(job_id=job.job_id, accepted=False, check=finding.failed,
                      detail=f"{len(failing)} of {len(findings)} rollouts fail; task {rollout.task_id} sample "
                             f"{rollout.sample_index}: {finding.detail}",
                      figures=figures, task_id=rollout.task_id, sample_index=rollout.sample_index)


def verify_job(model, tokenizer, job: pb.VerificationJob, tol: Tolerances) -> pb.Verdict:
    return verdict(job, check_job(model, tokenizer, job, tol))
