"""Edits of a big file on a real mount: each commit cuts and hashes only the chunks around what changed
(the mount's `cut_bytes`), and the server gets exactly the bytes the program wrote."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from cache.chunker import MAX_CHUNK, manifest_of
from tests.e2e.helpers import download

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py

MiB = 2**20
SIZE = 24 * MiB
# A change is cut again from the start of the chunk it falls in until the cuts meet the old ones: a
# chunk or two, each at most MAX_CHUNK. (The data are seeded, so what is cut is the same every run.)
AROUND_A_CHANGE = 2 * MAX_CHUNK


def cut_bytes(m) -> int:
    return json.loads(m.drive("status", str(m.path), "--json").stdout)[0]["cut_bytes"]


def on_server(m, name: str) -> bytes:
    return download(m.server.url, m.token, f"/{name}")


def assert_every_change_was_noted(m) -> None:
    """The check before each recut found no chunk changed without a note (it would have cut the file
    whole, so the bytes would still be right: only the log tells)."""
    assert "where no change was noted" not in (m.cache_dir / "mount.log").read_text()


def edit(m, name: str, offset: int, data: bytes) -> None:
    with open(m.path / name, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_edits_of_a_big_file_cut_only_around_each_change(mount, tmp_path):
    m = mount
    data = bytearray(random.Random(5).randbytes(SIZE))
    (m.path / "big.bin").write_bytes(data)
    m.flush()
    assert on_server(m, "big.bin") == data

    before = cut_bytes(m)
    edit(m, "big.bin", SIZE // 2, b"x")
    data[SIZE // 2] = ord("x")
    m.flush()
    assert 0 < cut_bytes(m) - before <= AROUND_A_CHANGE
    assert on_server(m, "big.bin") == data

    # Two changes far apart, then an append: each cut again on its own, in one commit.
    before = cut_bytes(m)
    edit(m, "big.bin", 3 * MiB, b"early")
    edit(m, "big.bin", 20 * MiB, b"late")
    more = random.Random(6).randbytes(MiB)
    with open(m.path / "big.bin", "ab") as f:
        f.write(more)
    data[3 * MiB:3 * MiB + 5] = b"early"
    data[20 * MiB:20 * MiB + 4] = b"late"
    data += more
    m.flush()
    assert 0 < cut_bytes(m) - before <= 2 * AROUND_A_CHANGE + MiB
    assert on_server(m, "big.bin") == data

    # Cut short and grown again: the tail is new, and only the tail is cut.
    before = cut_bytes(m)
    os.truncate(m.path / "big.bin", 15 * MiB)
    os.truncate(m.path / "big.bin", 18 * MiB)
    data = data[:15 * MiB] + bytes(3 * MiB)
    m.flush()
    assert 0 < cut_bytes(m) - before <= AROUND_A_CHANGE + 3 * MiB
    assert on_server(m, "big.bin") == data

    # What went up is what a whole cut of those bytes gives: the same chunk list, so the same dedupe.
    whole = tmp_path / "whole.bin"
    whole.write_bytes(data)
    with m.server.client(m.token) as c:
        ident = c.get("/api/v1/resolve", params={"path": "/big.bin"}).json()
        manifest = c.get(f"/api/v1/nodes/{ident['id']}/versions/{ident['version']}").json()["manifest"]
    assert [(c["hash"], c["size"]) for c in manifest] == [(r.hash, r.size) for r in manifest_of(whole)]
    assert_every_change_was_noted(m)


def test_a_write_into_an_uncached_big_file_commits_by_cutting_around_it(mount):
    m = mount
    data = bytearray(random.Random(7).randbytes(SIZE))
    (m.path / "big.bin").write_bytes(data)
    m.flush()
    m.unmount()
    shutil.rmtree(m.cache_dir)
    m.mount()

    before = cut_bytes(m)
    assert before == 0
    edit(m, "big.bin", 17 * MiB + 3, b"hello")  # fetches the file for the write, knowing its chunk list
    data[17 * MiB + 3:17 * MiB + 8] = b"hello"
    m.flush()
    assert 0 < cut_bytes(m) <= AROUND_A_CHANGE
    assert on_server(m, "big.bin") == data
    assert (m.path / "big.bin").read_bytes() == data
    assert_every_change_was_noted(m)


def test_after_a_restart_the_first_commit_cuts_the_whole_file_and_loses_no_edit(mount):
    m = mount
    data = bytearray(random.Random(8).randbytes(SIZE // 4))
    (m.path / "big.bin").write_bytes(data)
    m.flush()
    edit(m, "big.bin", 100, b"kept across the restart")
    data[100:123] = b"kept across the restart"
    m.unmount()  # flushes: the edit is on the server
    m.mount()
    edit(m, "big.bin", 5 * MiB, b"after")
    data[5 * MiB:5 * MiB + 5] = b"after"
    m.flush()
    assert cut_bytes(m) == len(data)  # nothing known of the file in this run: all of it was cut
    assert on_server(m, "big.bin") == data


def test_edits_closed_before_a_kill_reach_the_server_after_it(mount):
    """The records of what changed live in memory: a kill -9 loses them, never an edit."""
    m = mount
    data = bytearray(random.Random(9).randbytes(SIZE // 2))
    (m.path / "big.bin").write_bytes(data)
    m.flush()
    edit(m, "big.bin", 7 * MiB, b"before the kill")  # closed, and maybe committed already: either way
    data[7 * MiB:7 * MiB + 15] = b"before the kill"
    with open(m.path / "big.bin", "ab") as f:
        f.write(b"appended")
    data += b"appended"
    m.kill()
    m.mount()
    assert (m.path / "big.bin").read_bytes() == data
    edit(m, "big.bin", MiB, b"after")
    data[MiB:MiB + 5] = b"after"
    m.flush()
    assert on_server(m, "big.bin") == data
    assert_every_change_was_noted(m)


def test_random_edits_with_a_commit_after_each_few_reach_the_server_exactly(mount):
    """Writes, appends, truncations and O_TRUNC rewrites in a random order, committed every few steps:
    after each commit the server has the very bytes of a model of the file, whatever was cut again."""
    m = mount
    rng = random.Random(12)
    model = bytearray(rng.randbytes(16 * MiB))
    path = m.path / "edited.bin"
    path.write_bytes(model)
    m.flush()
    for step in range(24):
        kind = rng.choice(["write", "write", "write", "append", "truncate", "rewrite"])
        if kind == "write":
            offset = rng.randrange(len(model) + MiB)
            data = rng.randbytes(rng.choice([1, 4096, 300_000, 2 * MiB]))
            edit(m, path.name, offset, data)
            model.extend(bytes(max(0, offset - len(model))))
            model[offset:offset + len(data)] = data
        elif kind == "append":
            data = rng.randbytes(rng.randrange(1, 3 * MiB))
            with open(path, "ab") as f:
                f.write(data)
            model += data
        elif kind == "truncate":  # cut short, then grown again or not (the cut bytes come back as zeros)
            short = rng.randrange(MiB, len(model))
            for size in (short, short + rng.choice([0, 1, 3 * MiB, 8 * MiB])):
                os.truncate(path, size)
                model = model[:size] + bytes(max(0, size - len(model)))
        elif step % 8 == 5:  # now and then the whole file written anew through O_TRUNC
            model = bytearray(rng.randbytes(rng.randrange(4 * MiB, 16 * MiB)))
            path.write_bytes(model)
        if step % 3 == 2:
            m.flush()
            assert on_server(m, path.name) == model, f"after step {step} ({kind})"
    m.flush()
    assert on_server(m, path.name) == model
    assert path.read_bytes() == model
    assert_every_change_was_noted(m)
