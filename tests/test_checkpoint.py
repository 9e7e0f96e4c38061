import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_numpy

from protocol.checkpoint import Manifest, ManifestError, blob_layout, sha256_hex, sign_manifest, verify_manifest
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


@pytest.mark.parametrize("tensors, message", [
    ({"adapter/w": np.array([1.0, np.nan], dtype=np.float32)}, "non-finite"),
    ({"weights/w": np.zeros(2, dtype=np.float32)}, "unexpected tensor"),
])
def test_unsound_blobs_are_refused(tensors, message):
    with pytest.raises(ValueError, match=message):
        blob_layout(save_numpy(tensors))
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
