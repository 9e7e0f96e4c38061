"""Every RPC of a real coordinator process fuzzed with hypothesis: random envelopes, hostile but
well-signed bodies, raw bytes, forged and replayed signatures, unknown versions. Each request is
answered with a precise status and a `potluck-reason` (never INTERNAL or UNKNOWN), the process stays
up, and its database is consistent afterwards."""
import sqlite3
import time

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.config import PRESETS_DIR
from protocol.identity import peer_id
from protocol.signing import NonceClock, admin_method, sign_request
from protocol.v1 import admin_pb2 as apb
from protocol.v1 import coordinator_pb2 as pb
from tests.procs import Coordinator
from tests.rpc import Node, reason_of

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
MAX_STREAMS = 4
SERVICES = {"Coordinator": pb.DESCRIPTOR.services_by_name["Coordinator"],
            "Admin": apb.DESCRIPTOR.services_by_name["Admin"]}
SIGNED = [m.name for m in SERVICES["Coordinator"].methods if m.input_type.name == "SignedRequest"]
ALL_METHODS = [(s, m.name) for s, d in SERVICES.items() for m in d.methods]
HOSTILE_TEXT = ["", "\x00", "é" * 70, "x" * 300, "\u202e\ufeff", "/ip4/999.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/4001",
                "/dns4/example.org/tcp/443/p2p/QmNotAPeer", "garbage//", "-1", "NaN"]
INT_RANGES = {FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
              FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1)}


def body_type(method: str):
    name = f"{method}Body"
    return getattr(pb, name) if hasattr(pb, name) else getattr(apb, name)


def _scalar(field: FieldDescriptor):
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE_TEXT))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12)
    low, high = INT_RANGES.get(kind, (0, 2**32 - 1))
    return st.one_of(st.integers(max(low, -5), 20), st.sampled_from([low, high]))


@st.composite
def messages(draw, descriptor, depth=0):
    """A message of the given type with random, often hostile, field values."""
    fields = {}
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, item = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if item.type != FieldDescriptor.TYPE_MESSAGE:
                fields[field.name] = draw(st.dictionaries(_scalar(key), _scalar(item), max_size=3))
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            value = messages(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        fields[field.name] = draw(st.lists(value, max_size=3)) if field.is_repeated else draw(value)
    message = GetMessageClass(descriptor)()
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(message, name).update(value)
        elif descriptor.fields_by_name[name].is_repeated:
            getattr(message, name).extend(value)
        elif descriptor.fields_by_name[name].type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    run = tmp / "run.toml"
    run.write_text((PRESETS_DIR / "test.toml").read_text().replace("batch_groups = 4", "batch_groups = 256") +
                   f"\n[limits]\nrate_per_s = 10000\nburst = 10000\nmax_streams = {MAX_STREAMS}\n")
    proc = Coordinator(str(run), tmp / "data", tmp)
    proc.db = tmp / "data" / "state.sqlite"
    yield proc
    assert proc.popen.poll() is None, "the coordinator died under fuzzing:\n" + proc.log()[-4000:]
    assert "Traceback" not in proc.log(), proc.log()[-4000:]
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def channel(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def node(channel):
    from protocol.v1 import coordinator_pb2_grpc as pb_grpc
    return Node(pb_grpc.CoordinatorStub(channel))


def raw(channel, service: str, method: str):
    return channel.unary_unary(f"/potluck.v1.{service}/{method}", request_serializer=None,
                               response_deserializer=None)


def answered(call):
    """Call; a refusal must be precise: a known status and a reason trailer, never INTERNAL/UNKNOWN."""
    try:
        call()
        return None
    except grpc.RpcError as err:
        assert err.code() not in BROKEN, (err.code(), err.details())
        assert reason_of(err), (err.code(), err.details())
        return err


@SETTINGS
@given(method=st.sampled_from(SIGNED), node_id=st.one_of(st.text(max_size=60), st.just("")),
       nonce=st.integers(0, 2**64 - 1), body=st.binary(max_size=256), signature=st.binary(max_size=80))
def test_random_envelopes_are_refused(channel, method, node_id, nonce, body, signature):
    request = pb.SignedRequest(node_id=node_id, nonce=nonce, body=body, signature=signature)
    err = answered(lambda: raw(channel, "Coordinator", method)(request.SerializeToString(), timeout=10))
    assert err is not None


@SETTINGS
@given(data=st.data(), method=st.sampled_from(SIGNED))
def test_hostile_bodies_signed_by_a_known_node(channel, node, data, method):
    body = data.draw(messages(body_type(method).DESCRIPTOR))
    if method == "Register":
        body.public_key = node.identity.public_key
    answered(lambda: raw(channel, "Coordinator", method)(node.sign(method, body).SerializeToString(), timeout=10))


@SETTINGS
@given(target=st.sampled_from(ALL_METHODS), payload=st.one_of(st.binary(max_size=512), st.sampled_from(
    [b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab", b"\xff" * 16, pb.SignedRequest(node_id="x" * 64).SerializeToString()[:-3]])))
def test_raw_bytes_to_every_method(channel, target, payload):
    service, method = target
    if method in ("Watch", "FetchVersion"):
        answered(lambda: list(channel.unary_stream(f"/potluck.v1.{service}/{method}", request_serializer=None,
                                                   response_deserializer=None)(payload, timeout=10)))
    else:
        answered(lambda: raw(channel, service, method)(payload, timeout=10))


@SETTINGS
@given(part=st.sampled_from(["body", "signature", "nonce", "node_id"]), index=st.integers(0, 10_000),
       flip=st.integers(1, 255))
def test_forged_requests_are_refused(channel, node, part, index, flip):
    request = node.sign("Heartbeat", pb.HeartbeatBody(state="idle", tokens_per_s=1.0))
    if part == "nonce":
        request.nonce ^= flip
    elif part == "node_id":
        other = list(request.node_id)
        other[index % len(other)] = "1" if other[index % len(other)] != "1" else "2"
        request.node_id = "".join(other)
    else:
        data = bytearray(getattr(request, part))
        data[index % len(data)] ^= flip
        setattr(request, part, bytes(data))
    err = answered(lambda: raw(channel, "Coordinator", "Heartbeat")(request.SerializeToString(), timeout=10))
    assert err is not None and reason_of(err) in {"bad_signature", "bad_node_id", "unknown_node", "malformed_body"}


def test_replays_and_admin_forgeries_are_refused(channel, node):
    request = node.sign("Heartbeat", pb.HeartbeatBody(state="idle")).SerializeToString()
    raw(channel, "Coordinator", "Heartbeat")(request, timeout=10)
    assert reason_of(answered(lambda: raw(channel, "Coordinator", "Heartbeat")(request, timeout=10))) == "replayed_nonce"
    # A node's key, with the admin's method names, is still not the admin.
    forged = sign_request(node.identity, NonceClock(), admin_method("Ban"), apb.BanBody(node_id=node.identity.node_id))
    assert reason_of(answered(lambda: raw(channel, "Admin", "Ban")(forged.SerializeToString(), timeout=10))) == "not_admin"


@SETTINGS
@given(version=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1), latest=st.booleans())
def test_unknown_versions_and_offsets(channel, version, offset, latest):
    manifest = pb.GetVersionRequest(version=version, latest=latest).SerializeToString()
    answered(lambda: raw(channel, "Coordinator", "GetVersion")(manifest, timeout=10))
    fetch = pb.FetchVersionRequest(version=version, offset=offset).SerializeToString()
    err = answered(lambda: list(channel.unary_stream("/potluck.v1.Coordinator/FetchVersion", request_serializer=None,
                                                     response_deserializer=None)(fetch, timeout=10)))
    if version > 0:
        assert err is not None and reason_of(err) in {"unknown_version", "bad_offset", "out_of_range"}


def test_oversized_bodies_and_stream_cap(channel, node):
    big = pb.RegisterBody(public_key=node.identity.public_key, name="n", software_version="v" * (20 << 10))
    err = answered(lambda: node.call("Register", big))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(err) == "too_large"
    watch = channel.unary_stream("/potluck.v1.Coordinator/Watch", request_serializer=None, response_deserializer=None)
    streams = [watch(b"", timeout=30) for _ in range(MAX_STREAMS)]
    try:
        for stream in streams:
            next(stream)  # each is open and has sent its first snapshot
        err = answered(lambda: next(watch(b"", timeout=10)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(err) == "too_many_streams"
    finally:
        for stream in streams:
            stream.cancel()
    deadline = time.monotonic() + 10
    while True:  # the cancelled streams' slots come back
        try:
            next(watch(b"", timeout=10))
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "stream slots were not given back"
            time.sleep(0.1)


def test_zz_database_consistent_and_service_alive(coordinator, channel):
    """Runs last in this module: after all of the above, the state is whole and work still flows."""
    from protocol.v1 import coordinator_pb2_grpc as pb_grpc
    fresh = Node(pb_grpc.CoordinatorStub(channel))
    assert fresh.call("Heartbeat", pb.HeartbeatBody(state="idle")).current_version == 0
    assert fresh.call("LeaseRollouts", pb.LeaseRolloutsBody()).has_work
    db = sqlite3.connect(f"file:{coordinator.db}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM leases WHERE node_id NOT IN (SELECT node_id FROM nodes)").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM groups WHERE lease_id NOT IN (SELECT lease_id FROM leases)").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM rollouts WHERE group_id NOT IN (SELECT group_id FROM groups)").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM nodes WHERE credit < 0 OR (credit != tokens_generated"
                          " AND role = ?)", (pb.ROLE_INFERENCE,)).fetchone()[0] == 0
        # No node slipped in under a key that is not its id's, and no nonce from far outside the window.
        for node_id, key, nonce in db.execute("SELECT node_id, public_key, last_nonce FROM nodes"):
            assert peer_id(key) == node_id
            assert abs(nonce / 1e6 - time.time()) < 300 + 600, node_id
        assert db.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 1
    finally:
        db.close()
