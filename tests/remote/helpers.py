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
    """Chunk files the server's local blob store holds: file name -> size on disk."""
    root = server.data_dir / "blobs"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp")}


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
