"""--role auto: the pure rule (protocol/roles.py) and the coordinator applying it at Register."""
import asyncio

from node.client import CoordinatorClient
from protocol.identity import Identity
from protocol.roles import GIB, RunNeeds, choose_role, memory_needed, model_weight_bytes, usable_memory
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator

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
