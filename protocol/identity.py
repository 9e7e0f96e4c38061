"""Node identity: one Ed25519 key per node, whose libp2p peer id is the node id.

The peer id is what hivemind's p2p layer derives from the same key (identity multihash of the
protobuf-encoded public key, base58btc), so a node is known by one name on both planes.
"""
from __future__ import annotations

import os
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# libp2p crypto.proto: PublicKey{Type: Ed25519 (1), Data: 32 bytes}, then multihash "identity" (0x00).
_LIBP2P_ED25519_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH = b"\x00\x24"


def default_home() -> Path:
    return Path(os.environ.get("POTLUCK_HOME") or Path.home() / ".config" / "potluck")


def peer_id(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return base58.b58encode(_IDENTITY_MULTIHASH + _LIBP2P_ED25519_PREFIX + public_key).decode()


def public_key_of(node_id: str) -> bytes:
    """The Ed25519 public key a peer id embeds; ValueError if it is not an Ed25519 peer id."""
    try:
        raw = base58.b58decode(node_id)
    except ValueError as exc:
        raise ValueError(f"node id {node_id[:64]!r} is not base58") from exc
    prefix = _IDENTITY_MULTIHASH + _LIBP2P_ED25519_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_BYTES or not raw.startswith(prefix):
        raise ValueError(f"node id {node_id[:64]!r} is not an Ed25519 libp2p peer id")
    return raw[len(prefix):]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except InvalidSignature:
        return False


class Identity:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.node_id = peer_id(self.public_key)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> "Identity":
        """Load the key at path, or create it (readable by its owner only) on first use."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} does not hold an Ed25519 private key")
            return cls(key)
        identity = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = identity._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return identity

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def libp2p_private_key(self) -> bytes:
        """The key as libp2p's crypto.proto PrivateKey{Type: Ed25519, Data: seed ‖ public key}: the
        file format p2pd's `-id` reads, so the p2p daemon's peer id is this node id."""
        seed = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        data = seed + self.public_key
        return b"\x08\x01\x12" + bytes([len(data)]) + data
