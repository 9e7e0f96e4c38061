import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_numpy

from protocol.checkpoint import (BLOB_FORMAT, FULL_BLOB_FORMAT, Manifest, ManifestError, blob_format, blob_layout,
                                 sha256_hex, sign_manifest, verify_manifest)
from protocol.identity import Identity
from protocol.policy import decode_blob, encode_blob


def test_blob_round_trip_and_layout():
    adapter = {"layer.lora_A.weight": torch.randn(4, 8), "layer.lora_B.weight": torch.zeros(8, 4)}
    momentum = {k: torch.randn_like(v) for k, v in adapter.items()}
    blob = encode_blob(adapter, momentum)
    assert encode_blob(adapter, momentum) == blob  # deterministic bytes, so hashes agree
    got_adapter, got_momentum = decode_blob(blob)
    assert all(torch.equal(got_adapter[k], adapter[k]) and torch.equal(got_momentum[k], momentum[k]) for k in adapter)
    layout = blob_layout(blob)
    assert layout["adapter/layer.lora_A.weight"] == ("float32", (4, 8))
    assert len(layout) == 4


def test_full_weights_blob_has_its_own_format():
    weights = {"model.embed_tokens.weight": torch.randn(5, 3)}
    blob = encode_blob(weights, {k: torch.zeros_like(v) for k, v in weights.items()}, FULL_BLOB_FORMAT)
    assert blob_format(blob) == FULL_BLOB_FORMAT and blob_format(encode_blob(weights)) == BLOB_FORMAT
    assert blob_layout(blob) == {"weights/model.embed_tokens.weight": ("float32", (5, 3)),
                                 "outer_momentum/model.embed_tokens.weight": ("float32", (5, 3))}
    assert torch.equal(decode_blob(blob)[0]["model.embed_tokens.weight"], weights["model.embed_tokens.weight"])


@pytest.mark.parametrize("tensors, fmt, message", [
    ({"adapter/w": np.array([1.0, np.nan], dtype=np.float32)}, BLOB_FORMAT, "non-finite"),
    ({"weights/w": np.zeros(2, dtype=np.float32)}, BLOB_FORMAT, "unexpected tensor"),
    ({"adapter/w": np.zeros(2, dtype=np.float32)}, FULL_BLOB_FORMAT, "unexpected tensor"),
    ({"adapter/w": np.zeros(2, dtype=np.float32)}, None, "unknown version blob format"),
    ({"adapter/w": np.zeros(2, dtype=np.float32)}, "potluck-lora-v0", "unknown version blob format"),
])
def test_unsound_blobs_are_refused(tensors, fmt, message):
    with pytest.raises(ValueError, match=message):
        blob_layout(save_numpy(tensors, metadata=None if fmt is None else {"format": fmt}))
    with pytest.raises(ValueError, match="not a safetensors"):
        blob_layout(b"\x00" * 64)


def test_manifest_signature_is_checked():
    coordinator = Identity.generate()
    manifest = Manifest(run="r", version=3, parent=2, sha256=sha256_hex(b"x"), size=1, base_model="m", created_ms=1)
    text, signature = sign_manifest(coordinator, manifest)
    assert verify_manifest(coordinator.public_key, text, signature) == manifest
    with pytest.raises(ManifestError):
        verify_manifest(coordinator.public_key, text.replace('"version":3', '"version":4'), signature)
    with pytest.raises(ManifestError):
        verify_manifest(Identity.generate().public_key, text, signature)
