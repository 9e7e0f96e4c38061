"""DiLoCo rounds across real trainer processes: real hivemind peers on loopback, a real coordinator.

The faults come from the trainer's test hook POTLUCK_TEST_FAULT (node/trainer/faults.py): a
tampered candidate, a crash mid-round, a pseudo-gradient scaled x100 or sign-flipped, a trainer
stuck after its all-reduce (then killed with SIGKILL).
"""
import json
import math
import os
import signal
import sqlite3

from coordinator.screening import norm
from protocol.checkpoint import FULL_BLOB_FORMAT, blob_layout
from protocol.config import RunConfig
from protocol.identity import Identity
from protocol.policy import decode_blob, load_policy
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator, Proc, node, running, watch_until
from tests.test_swarm import fetch

RUN = """
name = "potluck-rounds"
seed = 3
heartbeat_seconds = 1.0
[rollouts]
group_size = 4
prompts_per_shard = 4
batch_groups = 6
max_async_level = 1
skip_zero_variance_groups = false
[training]
mode = "{mode}"
[grpo]
lr = {lr}
inner_steps = 2
lease_seconds = {lease}
[diloco]
submit_grace_seconds = {grace}
outer_lr = 0.7
outer_momentum = 0.9
trainers_per_round = {k}
join_seconds = {join}
averaging_wait_seconds = 2.0
compression = "{codec}"
[eval]
every = 0
[checkpoints]
keep_last = 1000
"""


def run_file(tmp_path, k: int, codec: str, join: float, mode: str = "lora", lr: float = 1e-3, lease: float = 60,
             grace: float = 60) -> str:
    path = tmp_path / "run.toml"
    path.write_text(RUN.format(k=k, codec=codec, join=join, mode=mode, lr=lr, lease=lease, grace=grace))
    return str(path)


def trainer(address: str, home, log_dir, fault: str = "") -> tuple[Proc, str]:
    """A trainer process (with the fault hook set, if asked) and its node id."""
    identity = Identity.load_or_create(home / "identity.key")  # made here, so the test knows the id
    os.environ.pop("POTLUCK_TEST_FAULT", None)
    if fault:
        os.environ["POTLUCK_TEST_FAULT"] = fault
    try:
        return node(address, "trainer", home, log_dir), identity.node_id
    finally:
        os.environ.pop("POTLUCK_TEST_FAULT", None)


def results(data) -> list[sqlite3.Row]:
    """Every trainer result with its round, read from the coordinator's own state."""
    db = sqlite3.connect(f"file:{data / 'state.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT r.round_id, r.version, r.state, r.members, x.node_id, x.verdict, x.averaged_with"
                          " FROM rounds r LEFT JOIN round_results x USING (round_id) ORDER BY r.created_ms").fetchall()
    finally:
        db.close()


def rounds_by_state(data) -> dict[str, dict]:
    out = {}
    for row in results(data):
        entry = out.setdefault(row["round_id"], {"version": row["version"], "state": row["state"],
                                                 "members": row["members"], "verdicts": {}})
        if row["node_id"]:
            entry["verdicts"][row["node_id"]] = row["verdict"]
    return out


def update_norm(address: str, version: int) -> float:
    before, after = (decode_blob(fetch(address, v)[1])[0] for v in (version - 1, version))
    return norm({k: after[k] - before[k] for k in after})


def test_three_trainers_outvote_a_bad_candidate_and_survive_a_crash(tmp_path):
    data = tmp_path / "coordinator"
    coordinator = Coordinator(run_file(tmp_path, 3, "fp16", 8.0), data, tmp_path)
    honest, honest_id = trainer(coordinator.address, tmp_path / "honest", tmp_path)
    liar, liar_id = trainer(coordinator.address, tmp_path / "liar", tmp_path, "candidate")
    crasher, crasher_id = trainer(coordinator.address, tmp_path / "crasher", tmp_path, "crash@3")
    inference = node(coordinator.address, "inference", tmp_path / "inf", tmp_path)
    with running(coordinator, honest, liar, crasher, inference):
        ids = {"honest": honest_id, "liar": liar_id, "crasher": crasher_id}
        watch_until(coordinator.address, lambda s: s.current_version >= 5, 300)
        rounds = list(rounds_by_state(data).values())
        # all three trained a round: two agree on one version, the tampered candidate is outvoted
        assert {"state": "published", "verdicts": {ids["honest"]: "agreed", ids["crasher"]: "agreed",
                                                   ids["liar"]: "outvoted"}}.items() <= rounds[0].items()
        # the crasher died in its round on v3: that round was decided without it, and the run went on
        crashed = [r for r in rounds if r["version"] == 3 and ids["crasher"] in r["members"]]
        assert crashed and ids["crasher"] not in crashed[0]["verdicts"]
        assert crasher.popen.wait(30) != 0
        published = {r["version"] for r in rounds if r["state"] == "published"}
        assert {0, 1, 2, 3, 4} <= published
        assert all(r["verdicts"].get(ids["honest"]) == "agreed" for r in rounds if r["state"] == "published")
        assert all(r["verdicts"].get(ids["liar"]) in ("outvoted", None) for r in rounds)


def test_late_joiner_agrees_and_a_poisoned_pseudo_gradient_is_refused(tmp_path):
    data = tmp_path / "coordinator"
    coordinator = Coordinator(run_file(tmp_path, 2, "int8", 0.5), data, tmp_path)
    first, first_id = trainer(coordinator.address, tmp_path / "first", tmp_path)
    poisoner, poisoner_id = trainer(coordinator.address, tmp_path / "poisoner", tmp_path, "scale100@4")
    inference = node(coordinator.address, "inference", tmp_path / "inf", tmp_path)
    with running(coordinator, first, poisoner, inference):
        watch_until(coordinator.address, lambda s: s.current_version >= 2, 400)
        # joins at v>=2: it loads that version's adapter and outer momentum from the coordinator
        # and must compute the same next version as the trainer that made them
        late, late_id = trainer(coordinator.address, tmp_path / "late", tmp_path)

        def late_agreed_after_the_refusal(_snapshot) -> bool:
            rounds = rounds_by_state(data).values()
            return any(r["state"] == "rejected" for r in rounds) and any(
                r["state"] == "published" and late_id in r["verdicts"] and len(r["verdicts"]) == 2
                and set(r["verdicts"].values()) == {"agreed"} for r in rounds)

        with running(late):
            watch_until(coordinator.address, late_agreed_after_the_refusal, 400)
        rounds = list(rounds_by_state(data).values())
        # the x100 pseudo-gradient on v4 was refused, its trainer excluded, and v4 redone without it
        refused = [r for r in rounds if r["state"] == "rejected"]
        assert len(refused) == 1 and refused[0]["version"] == 4
        assert refused[0]["verdicts"][poisoner_id] == "rejected"
        assert all(poisoner_id not in r["members"] for r in rounds[rounds.index(refused[0]) + 1:])
        # the version made after the refusal is no bigger a step than the honest ones before it
        # (v1 too started a fresh inner optimizer, as the honest trainer does after a refused round)
        sizes = [update_norm(coordinator.address, v) for v in range(1, 6)]
        assert all(math.isfinite(s) for s in sizes) and sizes[-1] < 2 * max(sizes[:-1])


def events(data, kind: str) -> list[str]:
    db = sqlite3.connect(f"file:{data / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT text FROM events WHERE kind=? ORDER BY id", (kind,))]
    finally:
        db.close()


def test_full_parameter_rounds_publish_whole_models_and_refuse_a_sign_flip(tmp_path):
    data = tmp_path / "coordinator"
    coordinator = Coordinator(run_file(tmp_path, 2, "fp16", 8.0, mode="full", lr=1e-4), data, tmp_path)
    honest, honest_id = trainer(coordinator.address, tmp_path / "honest", tmp_path)
    flipper, flipper_id = trainer(coordinator.address, tmp_path / "flipper", tmp_path, "signflip@2")
    inference = node(coordinator.address, "inference", tmp_path / "inf", tmp_path)
    with running(coordinator, honest, flipper, inference):
        def refused_then_redone_and_loaded(snapshot) -> bool:
            rounds = rounds_by_state(data).values()
            return any(r["state"] == "rejected" for r in rounds) and snapshot.current_version >= 3 and any(
                n.role == pb.ROLE_INFERENCE and n.holding_version >= 2 for n in snapshot.nodes)

        watch_until(coordinator.address, refused_then_redone_and_loaded, 300)
        rounds = list(rounds_by_state(data).values())
        # both trained v0 and v1 together; the sign-flipped pseudo-gradient on v2 points uphill on
        # its own shard: refused by the direction check, its trainer excluded, v2 redone without it
        assert all(set(r["verdicts"].values()) == {"agreed"} for r in rounds if r["version"] < 2)
        refused = [r for r in rounds if r["state"] == "rejected"]
        assert len(refused) == 1 and refused[0]["version"] == 2
        assert refused[0]["verdicts"][flipper_id] == "rejected" and refused[0]["verdicts"][honest_id] == "discarded"
        assert any("points uphill on its own shard" in e and flipper_id[-8:] in e for e in events(data, "reject"))
        # every version is the whole model: each parameter once under weights/, with its momentum
        params = {k: tuple(p.shape) for k, p in load_policy(RunConfig(training={"mode": "full"})).named_parameters()}
        n_params = sum(math.prod(s) for s in params.values())
        for version in range(4):
            manifest, blob = fetch(coordinator.address, version)
            assert json.loads(manifest.manifest_json)["format"] == FULL_BLOB_FORMAT
            layout = blob_layout(blob)
            assert {k: s for k, (_, s) in layout.items() if k.startswith("weights/")} == {
                f"weights/{k}": s for k, s in params.items()}
            assert sum(math.prod(s) for _, s in layout.values()) == 2 * n_params
            assert 8 * n_params < len(blob) < 8 * n_params + 64 * 1024  # float32 tensors + the header
        assert update_norm(coordinator.address, 3) > 0


def test_a_trainer_stuck_after_averaging_holds_the_round_until_it_is_killed(tmp_path):
    data = tmp_path / "coordinator"
    # leases and the submit grace are long: only the stuck trainer going offline can close its round
    coordinator = Coordinator(run_file(tmp_path, 2, "fp16", 8.0, lease=600, grace=600), data, tmp_path)
    steady, steady_id = trainer(coordinator.address, tmp_path / "steady", tmp_path)
    stuck, stuck_id = trainer(coordinator.address, tmp_path / "stuck", tmp_path, "hang@1")
    inference = node(coordinator.address, "inference", tmp_path / "inf", tmp_path)
    with running(coordinator, steady, stuck, inference):
        def steady_submitted_after_averaging_with_the_stuck_one(_snapshot) -> bool:
            return any(row["version"] == 1 and row["node_id"] == steady_id
                       and stuck_id in json.loads(row["averaged_with"]) for row in results(data))

        watch_until(coordinator.address, steady_submitted_after_averaging_with_the_stuck_one, 300)
        held = [r for r in rounds_by_state(data).values() if r["version"] == 1]
        # the stuck trainer still heartbeats: its round waits for it (it may yet submit)
        assert [r["state"] for r in held] == ["training"] and stuck.popen.poll() is None
        stuck.popen.send_signal(signal.SIGKILL)
        assert stuck.popen.wait(30) == -signal.SIGKILL
        watch_until(coordinator.address, lambda s: s.current_version >= 2, 300)
        closed = next(r for r in rounds_by_state(data).values() if r["version"] == 1 and stuck_id in r["members"])
        # closed once the killed trainer went offline, long before its 600 s lease; the result that
        # averaged with it cannot be checked without its pseudo-gradient, so the shards went back
        # to the pool and the steady trainer made v2 from them
        assert closed["state"] == "failed" and closed["verdicts"] == {steady_id: "unverifiable"}
        assert any(r["state"] == "published" and r["version"] == 1 and set(r["verdicts"]) == {steady_id}
                   for r in rounds_by_state(data).values())
