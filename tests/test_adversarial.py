"""Cheating nodes against a real coordinator, beside an honest inference node, a trainer and a
validator node (the run's only validator: the coordinator's embedded one is off).

Every cheater is a real node process (tests/cheat_node.py) or, for the cheats that are about the
request rather than the rollouts, a real gRPC client. Each must be refused with the right reason,
the ones caught cheating quarantined with their work void, and the honest nodes unaffected.
"""
import signal
import time

import grpc
import pytest

from node.inference.worker import rollouts_for
from protocol.config import PRESETS_DIR, load_run_config
from protocol.envs import make_environment
from protocol.identity import Identity
from protocol.policy import load_policy, load_tokenizer
from protocol.signing import NonceClock, signing_payload
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.adversary import CHEATS, EXPECTED_CHECKS
from tests.procs import Coordinator, Proc, node, watch_until
from tests.rpc import Node, refused

MAX_ASYNC_LEVEL = 2  # slack for the in-test node, whose shard must not go stale while it generates
RUN = (PRESETS_DIR / "test.toml").read_text().replace("batch_groups = 4", "batch_groups = 32").replace(
    "[eval]\nevery = 1", "[eval]\nevery = 0").replace(
    "max_async_level = 1", f"max_async_level = {MAX_ASYNC_LEVEL}") + "\n[verification]\nembedded = false\n"


def cheaters(address: str, tmp) -> Proc:
    """One process hosting a cheating node per kind."""
    return Proc("cheaters", [*CHEATS, "stale_version", "--coordinator", address, "--home-root", str(tmp),
                             "--max-async-level", str(MAX_ASYNC_LEVEL)], tmp, module="tests.cheat_node")


def by_name(snapshot: pb.SwarmSnapshot) -> dict[str, pb.NodeInfo]:
    return {n.name: n for n in snapshot.nodes}


def judged(snapshot: pb.SwarmSnapshot) -> bool:
    nodes = by_name(snapshot)
    return (all(nodes.get(f"cheat-{kind}") is not None and nodes[f"cheat-{kind}"].quarantined for kind in CHEATS)
            and snapshot.current_version >= 3
            and any(v.accepted and v.node_id == nodes["honest"].node_id for v in snapshot.verdicts))


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adversarial")
    validator = Identity.load_or_create(tmp / "validator" / "identity.key").node_id  # the key it will join with
    run = tmp / "run.toml"
    run.write_text(RUN + f'\n[admission]\nvalidators = ["{validator}"]\n')
    assert "batch_groups = 32" in RUN and "every = 0" in RUN and f"max_async_level = {MAX_ASYNC_LEVEL}" in RUN
    coordinator = Coordinator(str(run), tmp / "data", tmp)
    procs = [node(coordinator.address, "inference", tmp / "honest", tmp),
             node(coordinator.address, "trainer", tmp / "trainer", tmp),
             node(coordinator.address, "validator", tmp / "validator", tmp)]
    procs.append(cheaters(coordinator.address, tmp))
    try:
        snapshot = watch_until(coordinator.address, judged, 360)
        watch_until(coordinator.address, lambda s: "work refused (stale_version)" in procs[-1].log(), 120)
        yield coordinator, snapshot, {p.name: p for p in procs}, run
    finally:
        for proc in procs:  # all at once: each takes a moment to return its leases and exit
            proc.popen.send_signal(signal.SIGINT)
        for proc in procs:
            proc.stop()
        coordinator.stop()


@pytest.mark.parametrize("kind", list(CHEATS))
def test_cheater_is_rejected_for_the_right_reason_and_quarantined(swarm, kind):
    coordinator, _, _, _ = swarm
    snapshot = watch_until(coordinator.address, lambda s: True, 10)
    cheat = by_name(snapshot)[f"cheat-{kind}"]
    verdicts = [v for v in snapshot.verdicts if v.node_id == cheat.node_id]
    assert verdicts and not verdicts[-1].accepted and verdicts[-1].check in EXPECTED_CHECKS[kind], verdicts
    # The coordinator checks rewards and termination itself; the prefill checks are the validator's.
    coordinator_checks = {"reward_mismatch", "stopped_early"}
    assert verdicts[-1].validator == ("coordinator" if verdicts[-1].check in coordinator_checks
                                      else by_name(snapshot)["validator"].node_id)
    # Caught on its first checked submission: nothing it did was ever credited or pooled.
    assert cheat.quarantined and cheat.reputation == 0.0
    assert cheat.credit == 0 and cheat.rollouts_accepted == 0 and cheat.rollouts_rejected > 0
    assert any(e.kind == "quarantine" and cheat.node_id[-8:] in e.text for e in snapshot.events)


def test_stale_submission_is_refused_without_blame(swarm):
    coordinator, _, procs, _ = swarm
    snapshot = watch_until(coordinator.address, lambda s: True, 10)
    stale = by_name(snapshot)["cheat-stale_version"]
    assert "work refused (stale_version)" in procs["cheaters"].log()
    # Late is not dishonest: after the refusal it works on, honestly, unblamed.
    assert not stale.quarantined and stale.rollouts_rejected == 0


@pytest.fixture(scope="module")
def raw_node(swarm):
    """A real node in protocol terms: its own key, registered, generating with the real model."""
    coordinator, _, _, run = swarm
    config = load_run_config(str(run))
    with grpc.insecure_channel(coordinator.address) as channel:
        yield (Node(pb_grpc.CoordinatorStub(channel)), load_policy(config), load_tokenizer(config.model.name),
               make_environment(config.environment.name, config.environment.params))


def lease_shard(raw: Node, deadline_s: float = 60) -> pb.RolloutLease:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        lease = raw.call("LeaseRollouts", pb.LeaseRolloutsBody())
        if lease.has_work:
            return lease
        time.sleep(lease.retry_after_ms / 1000)
    raise AssertionError("no shard leased")


def test_replayed_and_duplicated_submissions_are_refused(raw_node):
    raw, model, tok, env = raw_node
    shard = lease_shard(raw)
    rollouts = rollouts_for(shard, model, tok, env)
    body = pb.SubmitRolloutsBody(lease_id=shard.lease_id, version=shard.version, rollouts=rollouts)
    duplicated = pb.SubmitRolloutsBody(lease_id=shard.lease_id, version=shard.version,
                                       rollouts=[*rollouts[:-1], rollouts[0]])
    refused(lambda: raw.call("SubmitRollouts", duplicated), grpc.StatusCode.INVALID_ARGUMENT, "duplicate_rollout")
    request = raw.sign("SubmitRollouts", body)
    assert raw.stub.SubmitRollouts(request).pending == len(rollouts)
    # The same signed bytes again (a replay by anyone who saw them), then the same work re-signed.
    refused(lambda: raw.stub.SubmitRollouts(request), grpc.StatusCode.UNAUTHENTICATED, "replayed_nonce")
    refused(lambda: raw.call("SubmitRollouts", body), grpc.StatusCode.FAILED_PRECONDITION, "lease_closed")


def test_forged_signature_is_refused(swarm, raw_node):
    coordinator, snapshot, _, _ = swarm
    raw, _, _, _ = raw_node
    stub, identity = raw.stub, raw.identity
    victim = by_name(snapshot)["honest"].node_id
    body = pb.ReturnLeasesBody(reason="forged").SerializeToString()
    nonce = NonceClock().next()
    forged = pb.SignedRequest(node_id=victim, nonce=nonce, body=body,
                              signature=identity.sign(signing_payload("ReturnLeases", victim, nonce, body)))
    refused(lambda: stub.ReturnLeases(forged), grpc.StatusCode.UNAUTHENTICATED, "bad_signature")
    after = watch_until(coordinator.address, lambda s: True, 10)
    assert by_name(after)["honest"].state != "left"


def test_only_named_validators_are_admitted(raw_node):
    raw, _, _, _ = raw_node
    refused(lambda: raw.call("Register", pb.RegisterBody(public_key=raw.identity.public_key, role=pb.ROLE_VALIDATOR)),
            grpc.StatusCode.PERMISSION_DENIED, "not_allowed")
    refused(lambda: raw.call("LeaseVerification", pb.LeaseVerificationBody()),
            grpc.StatusCode.PERMISSION_DENIED, "wrong_role")


def test_honest_nodes_are_unaffected(swarm):
    coordinator, _, _, _ = swarm
    snapshot = watch_until(coordinator.address, lambda s: True, 10)
    honest, trainer, validator = (by_name(snapshot)[name] for name in ("honest", "trainer", "validator"))
    assert not honest.quarantined and honest.rollouts_rejected == 0 and honest.rollouts_accepted > 0
    assert honest.credit > 0 and trainer.credit > 0 and validator.credit > 0 and honest.reputation > 0.5
    assert all(v.accepted for v in snapshot.verdicts if v.node_id == honest.node_id)
    assert snapshot.current_version >= 3
