"""The validator's checks (protocol/verification.py) on the built-in model: honest rollouts pass
under other batch compositions and thread counts, and each cheat fails the check meant to catch it."""
import pytest
import torch

from node.inference.worker import rollouts_for
from protocol.config import load_run_config
from protocol.envs import make_environment
from protocol.policy import adapter_state, load_adapter_state, load_policy, load_tokenizer
from protocol.v1 import coordinator_pb2 as pb
from protocol.verification import Tolerances, check_job, verdict
from tests.adversary import CHEATS, EXPECTED_CHECKS


@pytest.fixture(scope="module")
def setup():
    config = load_run_config("test")
    model = load_policy(config)
    torch.manual_seed(5)  # a trained-looking adapter, so a version differs from the base model
    load_adapter_state(model, {k: torch.randn_like(v) * 0.03 for k, v in adapter_state(model).items()})
    return config, model, load_tokenizer(config.model.name), make_environment("arithmetic")


def lease(env, n_prompts=8, group=4, seed=11, greedy=False, start=0):
    ids = env.sample_train_ids(__import__("random").Random(seed), n_prompts + start)[start:]
    return pb.RolloutLease(has_work=True, lease_id=f"lease-{seed}", version=3, group_size=1 if greedy else group,
                           seed=seed, prompts=[pb.Prompt(task_id=t, text=env.task(t).prompt) for t in ids],
                           sampling=pb.SamplingParams(temperature=1.0, max_new_tokens=env.max_new_tokens,
                                                      greedy=greedy))


def job(lease_msg, rollouts):
    return pb.VerificationJob(job_id=lease_msg.lease_id, version=lease_msg.version, sampling=lease_msg.sampling,
                              seed=lease_msg.seed, prompts=lease_msg.prompts, group_size=lease_msg.group_size,
                              rollouts=rollouts)


def test_honest_rollouts_pass_whatever_the_batch_and_threads(setup):
    config, model, tok, env = setup
    tol = Tolerances.from_config(config.verification)
    threads = torch.get_num_threads()
    try:
        for n_prompts, group, num_threads, greedy in ((1, 2, 1, False), (8, 4, 2, False), (16, 8, 1, False),
                                                      (32, 1, 2, True)):
            torch.set_num_threads(num_threads)
            shard = lease(env, n_prompts, group, seed=n_prompts * 7 + group, greedy=greedy)
            rollouts = rollouts_for(shard, model, tok, env)
            torch.set_num_threads(3 - num_threads)  # the validator runs with other threads than the node
            findings = check_job(model, tok, job(shard, rollouts), tol)
            assert [f.failed for f in findings] == [""] * len(rollouts), [f.detail for f in findings if f.failed]
            worst = verdict(job(shard, rollouts), findings).figures
            assert worst["sampling_gap"] <= tol.logit_margin / 10 and worst["logprob_error"] < 1e-3
            assert worst["proof_exp_mismatch"] < 0.05
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["other_weights", "paste_answer", "cherry_pick", "edit_tokens",
                                  "other_temperature", "ignore_seed"])
def test_each_model_level_cheat_fails_its_check(setup, kind):
    config, model, tok, env = setup
    shard = lease(env, 8, 4, seed=23)
    honest = {(r.task_id, r.sample_index): list(r.completion_ids) for r in rollouts_for(shard, model, tok, env)}
    cheated = CHEATS[kind](shard, model, tok, env)
    changed = [r for r in cheated if list(r.completion_ids) != honest[(r.task_id, r.sample_index)]]
    assert changed or kind == "other_weights", "the cheat changed nothing"
    result = verdict(job(shard, cheated), check_job(model, tok, job(shard, cheated), Tolerances.from_config(
        config.verification)))
    assert not result.accepted and result.check in EXPECTED_CHECKS[kind], (result.check, result.detail)


def test_a_tampered_proof_fails_the_proof_check(setup):
    config, model, tok, env = setup
    shard = lease(env, 4, 2, seed=31)
    rollouts = rollouts_for(shard, model, tok, env)
    flipped = bytearray(rollouts[1].proofs[0])
    flipped[10] ^= 0x40  # one coefficient changes, so the polynomial no longer fits the hidden states
    del rollouts[1].proofs[:]
    rollouts[1].proofs.append(bytes(flipped))
    rollouts[2].proofs.append(rollouts[2].proofs[0])  # one proof too many
    findings = check_job(model, tok, job(shard, rollouts), Tolerances.from_config(config.verification))
    assert [f.failed for f in findings] == ["", "proof", "proof", ""] + [""] * (len(rollouts) - 4)
