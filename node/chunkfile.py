"""A version blob assembled chunk by chunk: a pre-allocated `<sha256>.part` file in the version
cache, and which of its chunks are verified against the coordinator-signed manifest.

The fetcher writes chunks (each checked against its signed sha256 first), the seeder serves the
verified ones to other nodes, and a resumed download re-hashes what the file already holds and
keeps every chunk that matches. The methods block (disk I/O, hashing): call them off the event
loop where they touch many bytes (open, write, finish).
"""
from __future__ import annotations

import os
from pathlib import Path

from protocol.checkpoint import Manifest, ManifestError, sha256_hex


class ChunkFile:
    def __init__(self, manifest: Manifest, cache_dir: Path) -> None:
        self.manifest = manifest
        self.chunk_size, self.hashes = manifest.chunk_plan()
        self.count = len(self.hashes)
        self.final = cache_dir / manifest.sha256
        self.path = cache_dir / f"{manifest.sha256}.part"
        self.held: set[int] = set()
        self.fetching: set[int] = set()  # in flight right now (the seeder tells peers)
        self.complete = False
        cache_dir.mkdir(parents=True, exist_ok=True)
        if self.final.exists() and self._adopt_final():
            return
        self.final.unlink(missing_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        kept = os.fstat(self.fd).st_size
        self.held = {i for i in range(self.count) if self.span(i)[0] + self.span(i)[1] <= kept
                     and sha256_hex(self.read(i, check=False)) == self.hashes[i]}
        os.ftruncate(self.fd, manifest.size)  # sparse: chunks land at their offsets in any order

    def _adopt_final(self) -> bool:
        """A cached blob from an earlier fetch, if its bytes still match the manifest."""
        self.fd = os.open(self.final, os.O_RDONLY)
        data = os.pread(self.fd, self.manifest.size + 1, 0)
        if sha256_hex(data) != self.manifest.sha256:
            os.close(self.fd)
            return False
        self.held, self.complete = set(range(self.count)), True
        return True

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk index."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.manifest.size - offset)

    def held_bytes(self) -> int:
        return sum(self.span(i)[1] for i in self.held)

    def missing(self) -> set[int]:
        return set(range(self.count)) - self.held

    def read(self, index: int, check: bool = True) -> bytes:
        if check and index not in self.held:
            raise KeyError(f"chunk {index} of {self.manifest.sha256[:12]} is not held")
        offset, length = self.span(index)
        return os.pread(self.fd, length, offset)

    def write(self, index: int, data: bytes) -> bool:
        """Keep chunk index if data is exactly its signed bytes; False (nothing written) if not."""
        offset, length = self.span(index)
        if len(data) != length or sha256_hex(data) != self.hashes[index]:
            return False
        os.pwrite(self.fd, data, offset)
        self.held.add(index)
        return True

    def finish(self) -> bytes:
        """The whole blob, checked against the manifest's sha256 and moved to its cache name."""
        data = os.pread(self.fd, self.manifest.size, 0)
        if self.complete:
            return data
        if self.missing():
            raise ManifestError(f"version {self.manifest.version}: {len(self.missing())} chunk(s) still missing")
        if sha256_hex(data) != self.manifest.sha256:
            # every chunk matched its hash, so the manifest itself is inconsistent: start over
            self.held.clear()
            raise ManifestError(f"version {self.manifest.version}: the chunks do not add up to sha256 "
                                f"{self.manifest.sha256[:12]}")
        os.fsync(self.fd)
        os.replace(self.path, self.final)  # the open descriptor follows the file: seeding goes on
        self.complete = True
        return data

    def close(self) -> None:
        os.close(self.fd)
