"""Out of memory: batches sized from free memory (pure rules), and a node that runs out all the same
gives its lease back, reports it (ReportOutOfMemory, signed) and gets smaller work from a real
coordinator instead of crashing. The out-of-memory errors are real exceptions raised from a wrapped
generate call (fault injection); everything else is the real node worker and coordinator."""
import asyncio
import json
import sqlite3

import torch
from transformers import AutoConfig

import node.inference.worker as inference_worker
from node.client import CoordinatorClient
from node.hardware import rows_that_fit, sequence_bytes
from node.inference.worker import InferenceWorker
from node.versions import VersionLoader
from protocol.channel import sync_channel
from protocol.config import RunConfig
from protocol.envs import make_environment
from protocol.identity import Identity
from protocol.models import resolve_model
from protocol.policy import load_policy, load_tokenizer
from protocol.v1 import coordinator_pb2 as pb
from protocol.v1 import coordinator_pb2_grpc as pb_grpc
from tests.procs import Coordinator
from tests.rpc import Node

TINY = AutoConfig.from_pretrained(resolve_model("potluck/tiny-arith"))


def test_batches_fit_the_free_memory():
    one = sequence_bytes(TINY, 64, 4)
    assert sequence_bytes(TINY, 128, 4) > 2 * one > 0  # the KV cache grows with length, attention faster
    assert sequence_bytes(TINY, 64, 2) < one  # half-precision caches are smaller
    assert rows_that_fit(100 * one, one) == 50  # half the free memory, by default
    assert rows_that_fit(100 * one, one, fraction=1.0) == 100
    assert rows_that_fit(one // 10, one) == 1  # never zero: a node that cannot hold one finds out


def test_a_shard_is_generated_in_batches_of_the_rows_that_fit(monkeypatch):
    calls = []
    real_generate = inference_worker.generate
    monkeypatch.setattr(inference_worker, "generate",
                        lambda model, prompts, **kw: calls.append(len(prompts)) or real_generate(model, prompts, **kw))
    config = RunConfig()
    model, tok = load_policy(config, "cpu"), load_tokenizer(config.model.name)
    prompts = [tok(f"{10 ** i}+{i}=")["input_ids"] for i in range(5)]  # five lengths
    gen = inference_worker.generate_in_batches(model, prompts, list(range(5)), 2, max_new_tokens=4,
                                               eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    assert calls == [2, 2, 1]
    assert len(gen.completion_ids) == len(gen.logprobs) == len(gen.finished) == len(gen.activations) == 5
    # each row's prompt block of activations is its own prompt's length: the rows kept their order
    assert [block[0].shape[0] for block in gen.activations] == [len(p) for p in prompts]


RUN = """name = "memory"
seed = 1
[rollouts]
group_size = 2
prompts_per_shard = 4
batch_groups = 16
[eval]
every = 0
[verification]
embedded = false
"""


def test_a_node_that_runs_out_of_memory_gets_smaller_work(tmp_path, monkeypatch):
    (tmp_path / "run.toml").write_text(RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)
    batches: list[int] = []
    failures = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                MemoryError("cannot allocate memory")]  # what a GPU raises, then what the CPU does
    real_generate = inference_worker.generate

    def generate(model, prompts, **kwargs):
        batches.append(len(prompts))
        if failures:
            raise failures.pop(0)
        return real_generate(model, prompts, **kwargs)
    monkeypatch.setattr(inference_worker, "generate", generate)

    async def work() -> tuple[InferenceWorker, list[tuple]]:
        identity = Identity.generate()
        client = CoordinatorClient(coordinator.address, identity)
        try:
            reply = await client.call("Register", pb.RegisterBody(public_key=identity.public_key,
                                                                  role=pb.ROLE_INFERENCE), retry=False)
            config = RunConfig.model_validate_json(reply.run_config_json)
            loader = VersionLoader(client, reply.coordinator_public_key, tmp_path / "versions",
                                   load_policy(config, "cpu"))
            worker = InferenceWorker(client, loader, load_tokenizer(config.model.name),
                                     make_environment(config.environment.name, config.environment.params))
            for _ in range(3):
                await worker.step()
            return worker, _leases(tmp_path, identity.node_id)
        finally:
            await client.close()

    try:
        worker, leases = asyncio.run(work())
    finally:
        assert coordinator.stop() == 0, coordinator.log()
    # Each failure gave the lease back at once and halved the prompts of the next lease; the third fit.
    assert [(len(spec), state) for spec, state in leases] == [(4, "returned"), (2, "returned"), (1, "done")]
    # The node halved its own batches too: all 8 sequences at once, then at most 4, then 2 (in one call).
    assert batches == [8, 4, 2] and worker.row_cap == 2
    events = _query(tmp_path, "SELECT text FROM events WHERE kind = 'memory' ORDER BY id")
    assert len(events) == 2 and "at most 2 prompts" in events[0][0] and "at most 1 prompts" in events[1][0]


def _query(tmp_path, sql: str, args=()) -> list[tuple]:
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _leases(tmp_path, node_id: str) -> list[tuple]:
    rows = _query(tmp_path, "SELECT spec, state FROM leases WHERE node_id = ? ORDER BY rowid", (node_id,))
    return [(json.loads(spec)["task_ids"], state) for spec, state in rows]


TRAIN_RUN = """name = "memory-train"
[diloco]
trainers_per_round = 1
[roles]
hold_seconds = 0
"""


def test_an_auto_trainer_that_runs_out_of_memory_does_inference_from_then_on(tmp_path):
    (tmp_path / "run.toml").write_text(TRAIN_RUN)
    coordinator = Coordinator(str(tmp_path / "run.toml"), tmp_path / "data", tmp_path)
    big = pb.Hardware(device="cpu", ram_bytes=64 << 30, ram_available_bytes=32 << 30)
    try:
        with sync_channel(coordinator.address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            Node(stub)  # an inference node, so the run would make a trainer of an auto node if it could
            auto = Node(stub, role=pb.ROLE_UNSPECIFIED, hardware=big)
            assert auto.register_reply.role == pb.ROLE_TRAINER
            ran_out = auto.call("ReportOutOfMemory", pb.ReportOutOfMemoryBody(detail="CUDA out of memory"))
            assert ran_out.role == pb.ROLE_INFERENCE and ran_out.max_prompts == 0
            # The round still lacks its trainer, but this node is not made one again.
            assert auto.call("Heartbeat", pb.HeartbeatBody(state="idle")).role == pb.ROLE_INFERENCE
            assert auto.call("LeaseRollouts", pb.LeaseRolloutsBody()).has_work
            explicit = Node(stub, role=pb.ROLE_TRAINER)  # a node that asked to train keeps its role
            assert explicit.call("ReportOutOfMemory", pb.ReportOutOfMemoryBody()).role == pb.ROLE_TRAINER
    finally:
        assert coordinator.stop() == 0, coordinator.log()
    assert "moved from trainer to inference: this node ran out of memory training" in coordinator.log()
