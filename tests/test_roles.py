"""--role auto: the pure rules (protocol/roles.py), the coordinator applying them at Register, and
real nodes moved between inference and trainer as the run's needs change (explicit roles never)."""
import asyncio
import threading

from coordinator.store import Store, now_ms
from node.client import CoordinatorClient
from protocol.channel import sync_channel
from protocol.identity import Identity
from protocol.roles import (GIB, RunNeeds, choose_role, memory_needed, model_weight_bytes, rebalanced_role,
                            usable_memory)
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator, node, running, watch_until
from tests.rpc import Node

BIG = pb.Hardware(device="cpu", ram_bytes=32 * GIB, ram_available_bytes=16 * GIB)
SMALL = pb.Hardware(device="cpu", ram_bytes=GIB, ram_available_bytes=GIB // 8)
WEIGHTS = 100 << 20


def test_trainers_only_while_a_round_needs_them():
    assert choose_role(BIG, RunNeeds(0, 2, WEIGHTS, True)).role == pb.ROLE_TRAINER
    assert choose_role(BIG, RunNeeds(1, 2, WEIGHTS, True)).role == pb.ROLE_TRAINER
    full = choose_role(BIG, RunNeeds(2, 2, WEIGHTS, True))
    assert full.role == pb.ROLE_INFERENCE and "2 trainer(s)" in full.reason


def test_a_node_without_the_memory_or_the_admission_does_inference():
    small = choose_role(SMALL, RunNeeds(0, 1, WEIGHTS, True))
    assert small.role == pb.ROLE_INFERENCE and "GiB" in small.reason
    assert choose_role(BIG, RunNeeds(0, 1, WEIGHTS, False)).role == pb.ROLE_INFERENCE
    # memory is no bar when the model's size is unknown (not on the coordinator's disk)
    assert choose_role(SMALL, RunNeeds(0, 1, 0, True)).role == pb.ROLE_TRAINER


def test_never_a_validator_and_memory_is_the_gpu_on_cuda():
    for active in range(4):
        for may in (True, False):
            assert choose_role(BIG, RunNeeds(active, 2, WEIGHTS, may)).role in (pb.ROLE_TRAINER, pb.ROLE_INFERENCE)
    gpu = pb.Hardware(device="cuda", ram_bytes=GIB, gpus=[pb.Gpu(memory_bytes=8 * GIB), pb.Gpu(memory_bytes=24 * GIB)])
    assert usable_memory(gpu) == 24 * GIB
    assert usable_memory(pb.Hardware(device="cpu", ram_bytes=3 * GIB)) == 3 * GIB  # free RAM not reported
    assert memory_needed(pb.ROLE_TRAINER, WEIGHTS) > memory_needed(pb.ROLE_INFERENCE, WEIGHTS)
    assert model_weight_bytes("potluck/tiny-arith") > 0 and model_weight_bytes("no/such-model") == 0


def test_who_is_online_is_read_at_most_once_per_max_age_and_sees_registrations_and_moves_at_once(tmp_path):
    store = Store(tmp_path / "state.sqlite")
    for node_id, role in (("a", pb.ROLE_INFERENCE), ("b", pb.ROLE_TRAINER), ("v", pb.ROLE_VALIDATOR)):
        store.upsert_node(node_id, b"key", node_id, role, b"")
    assert store.online_roles(lambda: now_ms() + 60_000, 0.0).counts_excluding("a") == {}  # none seen since
    online = store.online_roles(lambda: 0, 3600.0)  # the last view was 0 s old at most: read again
    assert online.counts_excluding("a") == {pb.ROLE_INFERENCE: 0, pb.ROLE_TRAINER: 1, pb.ROLE_VALIDATOR: 1}
    assert online.counts_excluding("b") == {pb.ROLE_INFERENCE: 1, pb.ROLE_TRAINER: 0, pb.ROLE_VALIDATOR: 1}
    store.upsert_node("c", b"key", "c", pb.ROLE_TRAINER, b"")  # a registration counts at once
    store.set_role("b", pb.ROLE_INFERENCE)  # and so does a move
    shared = store.online_roles(lambda: now_ms() + 60_000, 3600.0)  # not read again: shared
    assert shared is online
    assert shared.counts_excluding("z") == {pb.ROLE_INFERENCE: 2, pb.ROLE_TRAINER: 1, pb.ROLE_VALIDATOR: 1}
    store.close()


RUN = """name = "roles"
[rollouts]
group_size = 2
prompts_per_shard = 2
batch_groups = 2
[diloco]
trainers_per_round = 2
"""


def test_the_coordinator_fills_a_round_with_trainers_then_makes_inference_nodes(tmp_path):
    (tmp_path / "run.toml").write_text(RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)

    async def register(identity: Identity, hardware: pb.Hardware) -> int:
        client = CoordinatorClient(coordinator.address, identity)
        try:
            reply = await client.call("Register", pb.RegisterBody(public_key=identity.public_key, hardware=hardware,
                                                                  role=pb.ROLE_UNSPECIFIED), retry=False)
            return reply.role
        finally:
            await client.close()

    async def joins() -> list[int]:
        first = Identity.generate()
        roles = [await register(Identity.generate(), SMALL)]  # too little memory to train
        roles += [await register(first, BIG), await register(Identity.generate(), BIG),
                  await register(Identity.generate(), BIG)]
        roles.append(await register(first, BIG))  # a trainer that rejoins keeps its role
        return roles

    try:
        roles = asyncio.run(joins())
    finally:
        assert coordinator.stop() == 0, coordinator.log()
    assert roles == [pb.ROLE_INFERENCE, pb.ROLE_TRAINER, pb.ROLE_TRAINER, pb.ROLE_INFERENCE, pb.ROLE_TRAINER]


def test_moves_need_a_lasting_shortage_or_excess_and_a_held_role():
    held, hold = 10.0, 5.0
    needs = lambda trainers, inference, may=True: RunNeeds(trainers, 2, WEIGHTS, may, inference)  # noqa: E731
    # Short of trainers, with someone left generating: an inference node becomes a trainer.
    assert rebalanced_role(pb.ROLE_INFERENCE, BIG, needs(1, 1), held, hold).role == pb.ROLE_TRAINER
    assert rebalanced_role(pb.ROLE_INFERENCE, BIG, needs(1, 0), held, hold) is None  # the pool would starve
    assert rebalanced_role(pb.ROLE_INFERENCE, SMALL, needs(0, 3), held, hold) is None  # no memory to train
    assert rebalanced_role(pb.ROLE_INFERENCE, BIG, needs(0, 3, may=False), held, hold) is None
    # Exactly the wanted number: nothing moves either way (the hysteresis band).
    assert rebalanced_role(pb.ROLE_INFERENCE, BIG, needs(2, 3), held, hold) is None
    assert rebalanced_role(pb.ROLE_TRAINER, BIG, needs(1, 3), held, hold) is None
    # A trainer goes back once the others fill the round, or when no one generates rollouts.
    excess = rebalanced_role(pb.ROLE_TRAINER, BIG, needs(2, 3), held, hold)
    assert excess.role == pb.ROLE_INFERENCE and "fill a round" in excess.reason
    starving = rebalanced_role(pb.ROLE_TRAINER, BIG, needs(1, 0), held, hold)
    assert starving.role == pb.ROLE_INFERENCE and "no inference node" in starving.reason
    assert rebalanced_role(pb.ROLE_TRAINER, BIG, needs(0, 0), held, hold) is None  # the last trainer stays
    # Nothing moves before the role was held hold_s; validators are never moved.
    assert rebalanced_role(pb.ROLE_INFERENCE, BIG, needs(0, 3), hold - 0.1, hold) is None
    assert rebalanced_role(pb.ROLE_TRAINER, BIG, needs(5, 3), hold - 0.1, hold) is None
    assert rebalanced_role(pb.ROLE_VALIDATOR, BIG, needs(0, 3), held, hold) is None


MOVES_RUN = """name = "moves"
seed = 1
heartbeat_seconds = 1
[rollouts]
group_size = 2
prompts_per_shard = 2
batch_groups = 2
skip_zero_variance_groups = false
[grpo]
inner_steps = 1
[eval]
every = 0
[diloco]
trainers_per_round = 1
[roles]
hold_seconds = 1
"""


class Heartbeating:
    """A registered trainer (signed calls from the test) kept online by heartbeats from a thread."""

    def __init__(self, stub) -> None:
        self.node = Node(stub, role=pb.ROLE_TRAINER)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(0.3):
            self.node.call("Heartbeat", pb.HeartbeatBody(state="waiting"))

    def leave(self) -> None:
        self._stop.set()
        self._thread.join()
        self.node.call("ReturnLeases", pb.ReturnLeasesBody(reason="test"))


def test_an_auto_node_is_moved_to_trainer_and_back_and_explicit_roles_stay(tmp_path):
    (tmp_path / "run.toml").write_text(MOVES_RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)
    address = coordinator.address
    seen_roles: dict[str, set[int]] = {}

    def roles_are(want: dict[str, int]):
        def check(snap: pb.SwarmSnapshot) -> bool:
            for n in snap.nodes:
                seen_roles.setdefault(n.name, set()).add(n.role)
            now = {n.name: n.role for n in snap.nodes if n.online}
            return all(now.get(name) == role for name, role in want.items())
        return check

    with running(coordinator), sync_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        first = Heartbeating(stub)  # the round's one trainer, there before the others join
        inference = node(address, "inference", tmp_path / "inf", tmp_path)
        auto = node(address, "auto", tmp_path / "auto", tmp_path)
        with running(inference, auto):
            watch_until(address, roles_are({"inf": pb.ROLE_INFERENCE, "auto": pb.ROLE_INFERENCE}), 120)
            first.leave()  # the round has no trainer now: the auto node is moved, the explicit one is not
            moved = watch_until(address, lambda s: roles_are({"auto": pb.ROLE_TRAINER})(s) and s.current_version >= 1,
                                180)
            assert {v.trainer for v in moved.versions[1:]} == {n.node_id for n in moved.nodes if n.name == "auto"}
            second = Heartbeating(stub)  # an explicit trainer comes: the auto node is one too many
            second_name = second.node.identity.node_id[-8:]
            back = watch_until(address, roles_are({"auto": pb.ROLE_INFERENCE, second_name: pb.ROLE_TRAINER}), 120)
            assert [n.name for n in back.nodes if n.role == pb.ROLE_TRAINER and n.online] == [second_name]
            events = [e.text for e in back.events if e.kind == "role"]
            assert any("moved from inference to trainer" in t for t in events), events
            assert any("moved from trainer to inference" in t and "fill a round" in t for t in events), events
            second.leave()
        assert "moving from inference to trainer" in auto.log() and "moving from trainer to inference" in auto.log()
    assert seen_roles["inf"] == {pb.ROLE_INFERENCE}  # explicit: never moved, though trainers were short
    assert coordinator.popen.returncode == 0, coordinator.log()
