import os
import stat

import pytest

from protocol.identity import Identity, peer_id, public_key_of, verify
from protocol.signing import NonceClock, sign_request, signing_payload
from protocol.v1 import coordinator_pb2 as pb


def test_node_id_is_a_libp2p_ed25519_peer_id():
    identity = Identity.generate()
    assert identity.node_id.startswith("12D3KooW")
    assert public_key_of(identity.node_id) == identity.public_key
    with pytest.raises(ValueError):
        public_key_of("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # an RSA-style (sha256) peer id
    with pytest.raises(ValueError):
        peer_id(b"short")


def test_signature_binds_method_node_nonce_and_body():
    identity, clock = Identity.generate(), NonceClock()
    request = sign_request(identity, clock, "Heartbeat", pb.HeartbeatBody(state="idle"))
    key = public_key_of(request.node_id)
    assert verify(key, signing_payload("Heartbeat", request.node_id, request.nonce, request.body), request.signature)
    tampered = [
        signing_payload("Register", request.node_id, request.nonce, request.body),
        signing_payload("Heartbeat", Identity.generate().node_id, request.nonce, request.body),
        signing_payload("Heartbeat", request.node_id, request.nonce + 1, request.body),
        signing_payload("Heartbeat", request.node_id, request.nonce, request.body + b"\x00"),
    ]
    assert not any(verify(key, message, request.signature) for message in tampered)
    assert not verify(Identity.generate().public_key, signing_payload(
        "Heartbeat", request.node_id, request.nonce, request.body), request.signature)


def test_nonces_strictly_increase():
    clock = NonceClock()
    nonces = [clock.next() for _ in range(1000)]
    assert all(b > a for a, b in zip(nonces, nonces[1:]))


def test_identity_is_created_once_and_private(tmp_path):
    path = tmp_path / "potluck" / "identity.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load_or_create(path).node_id == first.node_id
