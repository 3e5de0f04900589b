"""Test helpers: deterministic file contents and a look at the server's blob directory."""

from __future__ import annotations

import random
from pathlib import Path

from tests.fixtures.server import ServerProcess

BLOCK = 4 * 2**20


def write_random(path: Path, size: int, seed: int | None = None) -> Path:
    """A file of `size` pseudo-random (incompressible) bytes, written in blocks (memory stays small)."""
    rng = random.Random(seed if seed is not None else random.getrandbits(64))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(rng.randbytes(n))
            left -= n
    return path


def blob_files(server: ServerProcess) -> dict[str, int]:
    """Chunks the server's blob store holds (its folder or its S3 bucket): <hash>[.zst] -> stored size."""
    return server.blob_objects()


def same_file(a: Path, b: Path) -> bool:
    """Compare two files block by block."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if x != y:
                return False
            if not x:
                return True
