"""Version publishing and blob garbage collection against a real SQLite store and blob dir."""
from protocol.checkpoint import verify_manifest
from protocol.config import parse_run_config
from protocol.identity import Identity
from coordinator.blobs import BlobStore
from coordinator.context import RunContext
from coordinator.publisher import _publish, collect_garbage
from coordinator.store import Store


def make_ctx(tmp_path, toml: str) -> RunContext:
    return RunContext(config=parse_run_config(toml), store=Store(tmp_path / "state.sqlite"),
                      blobs=BlobStore(tmp_path / "blobs"), env=None, tokenizer=None,
                      identity=Identity.generate(), vocab_size=17)


def test_old_blobs_are_collected_but_recent_and_milestones_kept(tmp_path):
    ctx = make_ctx(tmp_path, "[checkpoints]\nkeep_last = 3\nkeep_every = 4\n")
    for version in range(11):
        with ctx.store.tx():
            _publish(ctx, version, version - 1 if version else None, f"blob {version}".encode(), "t", 0)
    # kept: the last 3 (8, 9, 10), milestones every 4th (0, 4, 8), and version 0
    assert collect_garbage(ctx) == 6
    held = {row["version"] for row in ctx.store.versions() if ctx.blobs.has(row["sha256"])}
    assert held == {0, 4, 8, 9, 10}
    assert collect_garbage(ctx) == 0
    # manifests survive collection and still verify
    row = ctx.store.version(5)
    assert verify_manifest(ctx.identity.public_key, row["manifest"], row["signature"]).version == 5


def test_identical_bytes_stay_while_a_kept_version_uses_them(tmp_path):
    ctx = make_ctx(tmp_path, "[checkpoints]\nkeep_last = 2\nkeep_every = 0\n")
    for version in range(4):
        with ctx.store.tx():
            _publish(ctx, version, version - 1 if version else None, b"same bytes", "t", 0)
    assert collect_garbage(ctx) == 0
    assert all(ctx.blobs.has(row["sha256"]) for row in ctx.store.versions())
