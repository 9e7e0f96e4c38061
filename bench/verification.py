"""What verification catches and what it costs, on CPU with the demo model.

    python -m bench.verification --json [--quick]

- false positives: honest rollouts (node.inference.worker.rollouts_for) judged by the validator
  (protocol.verification.check_job) under other conditions than they were made in, as a volunteer's
  machine and the validator's differ: batch sizes 1..128 rows, torch threads 1 and 2 on either side,
  2- and 3-digit prompts in one batch (left padding), sampled and greedy (eval) shards; the node
  generates one token per forward over its KV cache, the validator runs each distinct prompt once
  (a batch of another size) and then all completion tokens in one forward, so every sum is
  reduced in another order. The worst figures are reported beside their tolerances;
- detection: every cheat of tests/adversary.py on many shards, judged as a submission is: the
  coordinator's content check (coordinator.intake.content_failure), then the validator's. A shard
  counts only if the cheat changed it (tokens, rewards or log-probs) from the honest rollouts of
  the same lease. The protocol-level cheats (replay, duplicate, forged signature) are sent to a real
  coordinator process on loopback;
- cost: proof bytes, and proof building and validation time against generation time, side by side
  on one thread for the same demo shards (16 prompts x 8).

The policy is the demo run's base model with a random, trained-looking adapter (as
tests/test_verification.py uses), so a version differs from the base model. Progress goes to
stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import grpc
import torch

import node.inference.worker as inference_worker
import protocol.verification as verification
from coordinator.intake import content_failure
from node.inference.worker import rollouts_for
from protocol.config import load_run_config
from protocol.envs import Environment, Task, make_environment
from protocol.policy import adapter_state, load_adapter_state, load_policy, load_tokenizer
from protocol.proofs import build_proofs, split_prefill
from protocol.scoring import score
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from protocol.verification import Tolerances, check_job
from tests.adversary import CHEATS
from tests.test_adversarial import lease_shard
from tests.procs import Coordinator
from tests.rpc import Node, reason_of

# Honest shards: (prompts, group size, node threads, validator threads, 2- and 3-digit mixed, greedy).
HONEST_PLAN = [
    (1, 8, 1, 2, False, False),
    (4, 8, 2, 1, True, False),
    (16, 8, 1, 1, True, False),
    (16, 8, 2, 2, False, False),
    (64, 4, 1, 2, True, False),
    (64, 8, 2, 1, True, False),
    (64, 1, 1, 2, True, True),
    (128, 1, 2, 1, False, True),
]
QUICK_HONEST_PLAN = [(1, 8, 1, 2, False, False), (4, 4, 2, 1, True, False), (16, 1, 1, 2, True, True)]
WORST = ("sampling_gap", "logprob_error", "proof_exp_mismatch", "proof_mant_err_mean")
ADAPTER = "demo base model + random adapter (seed 5, N(0, 0.03^2) per tensor), as tests/test_verification.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class MixedDigits(Environment):
    """2-digit and 3-digit arithmetic in one id space (3-digit ids follow the 2-digit ones), so a
    lease can hold prompts of both lengths and the node's batch is left-padded."""
    name = "arithmetic-mixed"

    def __init__(self, short: Environment, long: Environment) -> None:
        self.short, self.long, self.offset = short, long, short.size
        self.max_new_tokens = max(short.max_new_tokens, long.max_new_tokens)

    def _part(self, task_id: int) -> tuple[Environment, int]:
        return (self.short, task_id) if task_id < self.offset else (self.long, task_id - self.offset)

    def task(self, task_id: int) -> Task:
        env, local = self._part(task_id)
        inner = env.task(local)
        return Task(task_id, inner.prompt, inner.answer)

    def _both(self, short_ids: list[int], long_ids: list[int]) -> list[int]:
        mixed = [i for pair in zip(short_ids, long_ids) for i in pair]  # alternate: rows of both lengths
        return mixed + short_ids[len(long_ids):] + long_ids[len(short_ids):]

    def sample_train_ids(self, rng: random.Random, n: int) -> list[int]:
        long = [self.offset + i for i in self.long.sample_train_ids(rng, n // 2)]
        return self._both(self.short.sample_train_ids(rng, n - n // 2), long)

    def eval_ids(self) -> list[int]:
        return self._both(self.short.eval_ids(), [self.offset + i for i in self.long.eval_ids()])

    def is_eval(self, task_id: int) -> bool:
        env, local = self._part(task_id)
        return env.is_eval(local)

    def reward(self, task: Task, completion: str, finished: bool) -> float:
        return self.short.reward(task, completion, finished)


def make_lease(env: Environment, seed: int, prompts: int, group: int, temperature: float,
               greedy: bool = False) -> pb.RolloutLease:
    rng = random.Random(seed)
    ids = rng.sample(env.eval_ids(), prompts) if greedy else env.sample_train_ids(rng, prompts)
    return pb.RolloutLease(has_work=True, lease_id=f"bench-{seed}", version=1, eval=greedy,
                           group_size=1 if greedy else group, seed=seed,
                           prompts=[pb.Prompt(task_id=t, text=env.task(t).prompt) for t in ids],
                           sampling=pb.SamplingParams(temperature=temperature, max_new_tokens=env.max_new_tokens,
                                                      greedy=greedy))


def job(lease: pb.RolloutLease, rollouts: list[pb.Rollout]) -> pb.VerificationJob:
    return pb.VerificationJob(job_id=lease.lease_id, version=lease.version, sampling=lease.sampling, seed=lease.seed,
                              prompts=lease.prompts, group_size=lease.group_size, rollouts=rollouts)


class Stopwatch:
    """Seconds spent in named functions, by wrapping them where their callers look them up, so the
    real node and validator code paths are timed as they run."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def timing(self, module, name: str):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        setattr(module, name, timed)
        try:
            yield
        finally:
            setattr(module, name, original)


@contextmanager
def threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.config = load_run_config("demo")
        self.model = load_policy(self.config)
        torch.manual_seed(5)
        load_adapter_state(self.model, {k: torch.randn_like(v) * 0.03 for k, v in adapter_state(self.model).items()})
        self.tok = load_tokenizer(self.config.model.name)
        self.env = make_environment(self.config.environment.name, self.config.environment.params)
        self.mixed = MixedDigits(self.env, make_environment("arithmetic", {"digits": 3, "eval_fraction": 32}))
        self.tol = Tolerances.from_config(self.config.verification)
        self.temperature = self.config.sampling.temperature
        self.honest = 0
        self.false_positives: Counter[str] = Counter()
        self.worst = dict.fromkeys(WORST, 0.0)
        self.proof_bytes: list[int] = []

    def judge_honest(self, lease: pb.RolloutLease, rollouts: list[pb.Rollout]) -> None:
        for finding in check_job(self.model, self.tok, job(lease, rollouts), self.tol):
            self.honest += 1
            if finding.failed:
                self.false_positives[finding.failed] += 1
            for name in WORST:
                self.worst[name] = max(self.worst[name], finding.figures.get(name, 0.0))
        self.proof_bytes += [sum(len(p) for p in r.proofs) for r in rollouts]

    def honest_shards(self) -> None:
        for number, (prompts, group, node_threads, validator_threads, mixed, greedy) in enumerate(
                QUICK_HONEST_PLAN if self.quick else HONEST_PLAN):
            env = self.mixed if mixed else self.env
            lease = make_lease(env, 100 + number, prompts, group, self.temperature, greedy)
            with threads(node_threads):
                rollouts = rollouts_for(lease, self.model, self.tok, self.mixed)
            with threads(validator_threads):
                self.judge_honest(lease, rollouts)
            log(f"honest {prompts}x{lease.group_size} {'mixed' if mixed else '2-digit'}"
                f"{' greedy' if greedy else ''}, node {node_threads} / validator {validator_threads} threads: "
                f"{self.honest} judged, {sum(self.false_positives.values())} false positives")

    def rejection(self, lease: pb.RolloutLease, rollouts: list[pb.Rollout]) -> str:
        """The check that rejects the submission ('' if none): the coordinator's first, then the validator's."""
        eos = self.tok.eos_token_id
        recomputed = [score(self.env, self.tok, r.task_id, list(r.completion_ids), eos) for r in rollouts]
        failure = content_failure(rollouts, recomputed, lease.sampling.max_new_tokens)
        if failure is not None:
            return failure[0]
        return next((f.failed for f in check_job(self.model, self.tok, job(lease, rollouts), self.tol) if f.failed), "")

    def changed(self, honest: list[pb.Rollout], cheated: list[pb.Rollout]) -> bool:
        mine = {(r.task_id, r.sample_index): r for r in honest}
        for r in cheated:
            h = mine.get((r.task_id, r.sample_index))
            if (h is None or list(h.completion_ids) != list(r.completion_ids) or h.reward != r.reward
                    or max(abs(a - b) for a, b in zip(h.logprobs, r.logprobs)) > self.tol.logprob_tolerance):
                return True
        return False

    def cheats(self, shards: int) -> dict:
        leases = [make_lease(self.env, 1000 + 17 * i, 4, 4, self.temperature) for i in range(shards)]
        with threads(1):
            honest = [rollouts_for(lease, self.model, self.tok, self.env) for lease in leases]
            for lease, rollouts in zip(leases, honest):
                self.judge_honest(lease, rollouts)
            result = {"rate": {}, "unchanged": {}, "caught_by": {}}
            for kind, cheat in CHEATS.items():
                caught, unchanged = Counter(), 0
                for lease, mine in zip(leases, honest):
                    cheated = cheat(lease, self.model, self.tok, self.env)
                    if not self.changed(mine, cheated):
                        unchanged += 1
                        continue
                    caught[self.rejection(lease, cheated) or "accepted"] += 1
                judged = shards - unchanged
                result["rate"][kind] = (judged - caught["accepted"]) / judged if judged else None
                result["unchanged"][kind] = unchanged
                result["caught_by"][kind] = dict(caught)
                log(f"cheat {kind}: {judged} changed shards, caught by {dict(caught)}; {unchanged} unchanged")
        return result

    def timing(self, shards: int) -> dict:
        """Generation, proving and validation of the same demo shards, one thread, interleaved so
        that the load of a shared machine falls on all three alike."""
        watch = Stopwatch()
        rollouts_seen = 0
        with threads(1), watch.timing(inference_worker, "generate"), \
                watch.timing(inference_worker, "build_proofs_batch"), watch.timing(verification, "prefill_shared"):
            for number in range(shards):
                lease = make_lease(self.env, 5000 + number, self.config.rollouts.prompts_per_shard,
                                   self.config.rollouts.group_size, self.temperature)
                rollouts = rollouts_for(lease, self.model, self.tok, self.env)
                start = time.perf_counter()
                self.judge_honest(lease, rollouts)
                watch.seconds["check_job"] += time.perf_counter() - start
                rollouts_seen += len(rollouts)
        generate_s = watch.seconds["generate"]
        log(f"timing: {shards} shards, generate {generate_s:.2f}s, prove {watch.seconds['build_proofs_batch']:.3f}s, "
            f"validate {watch.seconds['check_job']:.2f}s (of which prefill {watch.seconds['prefill_shared']:.2f}s)")
        return {
            "prove_overhead": watch.seconds["build_proofs_batch"] / generate_s,
            "verify_over_generate": watch.seconds["check_job"] / generate_s,
            "timing": {"threads": 1, "shards": shards, "rollouts": rollouts_seen,
                       "generate_s": round(generate_s, 3), "prove_s": round(watch.seconds["build_proofs_batch"], 4),
                       "validate_s": round(watch.seconds["check_job"], 3),
                       "validate_prefill_s": round(watch.seconds["prefill_shared"], 3)},
        }

    def chunk_proof_bytes(self) -> int:
        """The size of one full decode chunk's proof (32 positions), built from real hidden states."""
        prompt = self.tok(self.env.task(0).prompt)["input_ids"]
        digits = self.tok("0123456789", add_special_tokens=False)["input_ids"]
        sequence = prompt + [random.Random(0).choice(digits) for _ in range(32)]
        (_, hidden), = verification.prefill_shared(self.model, [prompt], [(0, sequence[len(prompt):])],
                                                   self.tok.pad_token_id)
        proofs = build_proofs(split_prefill(hidden, len(prompt)))
        assert len(proofs) == 2, "a prompt chunk and one decode chunk"
        return len(proofs[1])


def protocol_refusals(rounds: int) -> dict:
    """Replayed, duplicated and forged requests against a real coordinator (the `test` preset) on
    loopback: {kind: [refused with the right reason, attempts]}."""
    config = load_run_config("test")
    model, tok = load_policy(config), load_tokenizer(config.model.name)  # version 0 exactly
    env = make_environment(config.environment.name, config.environment.params)
    expected = {"duplicate": (grpc.StatusCode.INVALID_ARGUMENT, "duplicate_rollout"),
                "replay": (grpc.StatusCode.UNAUTHENTICATED, "replayed_nonce"),
                "resubmit": (grpc.StatusCode.FAILED_PRECONDITION, "lease_closed"),
                "forged_signature": (grpc.StatusCode.UNAUTHENTICATED, "bad_signature")}
    tally = {kind: [0, 0] for kind in expected}

    def attempt(kind: str, call) -> None:
        tally[kind][1] += 1
        try:
            call()
        except grpc.RpcError as err:
            tally[kind][0] += (err.code(), reason_of(err)) == expected[kind]

    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator("test", Path(tmp) / "data", Path(tmp))
        try:
            with grpc.insecure_channel(coordinator.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                cheat, victim = Node(stub), Node(stub)
                victim_id = victim.register_reply.node_id
                for _ in range(rounds):
                    lease = lease_shard(cheat)
                    rollouts = rollouts_for(lease, model, tok, env)
                    body = pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version, rollouts=rollouts)
                    duplicated = pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version,
                                                       rollouts=[*rollouts[:-1], rollouts[0]])
                    attempt("duplicate", lambda: cheat.call("SubmitRollouts", duplicated))
                    request = cheat.sign("SubmitRollouts", body)
                    cheat.stub.SubmitRollouts(request)  # the honest submission
                    attempt("replay", lambda: cheat.stub.SubmitRollouts(request))
                    attempt("resubmit", lambda: cheat.call("SubmitRollouts", body))
                    forged = cheat.sign("ReturnLeases", pb.ReturnLeasesBody(reason="forged"))
                    forged.node_id = victim_id  # signed with the cheat's key in the victim's name
                    attempt("forged_signature", lambda: stub.ReturnLeases(forged))
        finally:
            coordinator.stop()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run (a smoke test, not the figures)")
    parser.add_argument("--cheat-shards", type=int, help="shards per cheat kind (default 20, quick 1)")
    parser.add_argument("--timing-shards", type=int, help="demo shards timed (default 12, quick 1)")
    parser.add_argument("--no-coordinator", action="store_true",
                        help="skip the protocol-level cheats against a real coordinator (quick skips them)")
    parser.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON)")
    args = parser.parse_args()
    started = time.perf_counter()
    bench = Bench(args.quick)
    cheat_shards = args.cheat_shards or (1 if args.quick else 20)
    timing_shards = args.timing_shards or (1 if args.quick else 12)

    timing = bench.timing(timing_shards)
    bench.honest_shards()
    cheats = bench.cheats(cheat_shards)
    notes = ["stale_version is refused deterministically at submission (FAILED_PRECONDITION stale_version) "
             "once the run is more than max_async_level versions past the lease; it needs trained versions, so "
             "it is exercised in tests/test_adversarial.py, not here"]
    rates = dict(cheats["rate"])
    if args.quick or args.no_coordinator:
        notes.append("replay, duplicate, resubmit and forged_signature were not exercised in this run (no coordinator)")
        protocol = {}
    else:
        protocol = protocol_refusals(rounds=3)
        log(f"protocol-level refusals (refused, attempts): {protocol}")
        rates.update({kind: refused / attempts for kind, (refused, attempts) in protocol.items()})
    tol = bench.tol
    tolerances = {"sampling_gap": tol.logit_margin, "logprob_error": tol.logprob_tolerance,
                  "proof_exp_mismatch": tol.proof.max_exp_mismatch_fraction,
                  "proof_mant_err_mean": tol.proof.max_mant_err_mean}
    judged = [rate for rate in rates.values() if rate is not None]
    result = {
        "device": "cpu",
        "model": bench.config.model.name,
        "adapter": ADAPTER,
        "quick": args.quick,
        "honest_rollouts": bench.honest,
        "false_positive_rate": sum(bench.false_positives.values()) / bench.honest,
        "false_positives_by_check": dict(bench.false_positives),
        "honest_worst": {k: round(v, 6) for k, v in bench.worst.items()},
        "tolerances": tolerances,
        "honest_worst_over_tolerance": {k: round(bench.worst[k] / tolerances[k], 4) for k in WORST},
        "detection_rate": rates,
        "detection_rate_min": min(judged) if judged else None,
        "cheat_shards_per_kind": cheat_shards,
        "cheat_shards_unchanged": cheats["unchanged"],
        "caught_by": cheats["caught_by"],
        "protocol_refusals": {kind: {"refused": r, "attempts": a} for kind, (r, a) in protocol.items()},
        "proof_bytes_per_32_tokens": bench.chunk_proof_bytes(),
        "proof_bytes_per_rollout": round(sum(bench.proof_bytes) / len(bench.proof_bytes), 1),
        "prove_overhead": round(timing["prove_overhead"], 4),
        "verify_over_generate": round(timing["verify_over_generate"], 4),
        "timing": timing["timing"],
        "targets": {"detection_rate_min": 1.0, "false_positive_rate": 0.0, "prove_overhead": 0.05,
                    "verify_over_generate": 0.2},
        "notes": notes,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    log(json.dumps(result, indent=1))  # for a reader; the figures are the last stdout line
    print(json.dumps(result))


if __name__ == "__main__":
    main()
