"""Content-addressed blob files: blobs/<sha256[:2]>/<sha256>, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from protocol.checkpoint import sha256_hex


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        path = self.path(digest)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        return digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str, offset: int, length: int) -> bytes:
        with open(self.path(digest), "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
