"""Verdicts and their consequences on a real run state (SQLite in a temp dir): sampled checking,
credit granted only for accepted work, and a caught node's unchecked work voided."""
import pytest

from coordinator import intake, scheduler, verdicts
from coordinator.reputation import reputation
from coordinator.server import open_run
from protocol.config import RunConfig, load_run_config
from protocol.identity import Identity
from protocol.v1 import coordinator_pb2 as pb

EOS = 2
PROOF = bytes(258)  # never read here: no model-level check runs in these tests


def context(tmp_path, rate: float):
    """The test run, without evals, room for many shards, checking `rate` of its submissions."""
    data = load_run_config("test").model_dump()
    data["verification"]["rate"], data["eval"]["every"], data["rollouts"]["batch_groups"] = rate, 0, 64
    return open_run(RunConfig.model_validate(data), tmp_path / "run")


def join(ctx) -> str:
    identity = Identity.generate()
    with ctx.store.tx():
        ctx.store.upsert_node(identity.node_id, identity.public_key, "n", pb.ROLE_INFERENCE, b"")
    return identity.node_id


def submit(ctx, node_id: str, inflate: bool = False) -> pb.SubmitRolloutsReply:
    lease = scheduler.lease_rollouts(ctx, node_id, 0)
    assert lease.has_work and not lease.eval
    # EOS at once: reward 0 for every task, honestly claimed unless inflated.
    rollouts = [pb.Rollout(task_id=p.task_id, sample_index=i, completion_ids=[EOS], logprobs=[-0.1], finished=True,
                           reward=1.0 if inflate else 0.0, proofs=[PROOF])
                for p in lease.prompts for i in range(lease.group_size)]
    return intake.submit_rollouts(ctx, node_id, pb.SubmitRolloutsBody(lease_id=lease.lease_id, version=lease.version,
                                                                       rollouts=rollouts))


@pytest.fixture
def unchecked(tmp_path):
    """A run that checks (almost) nothing: the rate must be > 0, and 1e-12 never fires in practice."""
    ctx = context(tmp_path, 1e-12)
    yield ctx
    ctx.store.close()


def test_unchecked_work_counts_at_once_and_is_voided_when_its_node_is_caught(unchecked):
    ctx = unchecked
    cheat, honest = join(ctx), join(ctx)
    for _ in range(3):
        reply = submit(ctx, cheat)
        assert reply.accepted == 16 and reply.pending == 0 and reply.credit > 0
    submit(ctx, honest)
    # A trainer already used one of the cheater's batches: that cannot be undone, only uncredited.
    first = ctx.store.submissions_of(cheat, ("accepted",))[0]["lease_id"]
    with ctx.store.tx():
        ctx.store.set_groups_state([g["group_id"] for g in ctx.store.groups_of_submission(first)], "consumed")

    caught = submit(ctx, cheat, inflate=True)  # the coordinator's own reward check always runs
    assert caught.rejected == 16 and caught.reject_reason == "reward_mismatch"
    node = ctx.store.node(cheat)
    assert node["quarantined"] and node["credit"] == 0 and node["rollouts_accepted"] == 0
    assert {s["state"] for s in ctx.store.submissions_of(cheat, ("accepted", "void", "rejected", "pending"))} == {
        "void", "rejected"}
    assert ctx.store.count_groups("pool") == 4  # only the honest node's groups are left to train on
    assert ctx.store.node(honest)["credit"] > 0 and not ctx.store.node(honest)["quarantined"]
    events = [e["text"] for e in ctx.store.recent_events(20) if e["kind"] == "quarantine"]
    assert events and "3 unchecked submissions void (1 already trained on)" in events[-1]


def test_checked_work_waits_for_its_verdict(tmp_path):
    ctx = context(tmp_path, 1.0)
    node_id = join(ctx)
    assert submit(ctx, node_id).pending == 16 and submit(ctx, node_id).pending == 16
    assert ctx.store.node(node_id)["credit"] == 0 and ctx.store.count_groups("pool") == 0

    lease = verdicts.lease_jobs(ctx, verdicts.EMBEDDED_VALIDATOR)
    assert [len(job.rollouts) for job in lease.jobs] == [16, 16]
    assert not verdicts.lease_jobs(ctx, verdicts.EMBEDDED_VALIDATOR).has_work  # leased jobs are not handed out twice
    first, second = lease.jobs
    assert list(first.rollouts[0].proofs) == [PROOF]  # what the validator gets is what the node sent
    recorded = verdicts.record_verdicts(ctx, verdicts.EMBEDDED_VALIDATOR, lease.lease_id, [
        pb.Verdict(job_id=first.job_id, accepted=True, figures={"sampling_gap": 0.0}),
        pb.Verdict(job_id=second.job_id, check=verdicts.UNVERIFIABLE, detail="bytes gone")])
    assert recorded == 2
    node = ctx.store.node(node_id)
    assert node["credit"] == 16 and node["rollouts_accepted"] == 16 and node["verified_ok"] == 1
    assert not node["quarantined"]  # an unverifiable submission is nobody's fault
    assert ctx.store.count_groups("pool") == 4 and ctx.store.count_groups("void") == 4
    ctx.store.close()


def test_reputation_is_slow_to_earn_and_quick_to_lose():
    assert reputation(0, 0, False) == 0.5
    assert reputation(20, 0, False) > 0.95
    assert reputation(20, 1, False) < 0.7  # one caught failure outweighs twenty passes
    assert reputation(1000, 0, True) == 0.0
