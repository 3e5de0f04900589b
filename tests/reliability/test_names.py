"""Odd names round-trip byte for byte: through one mount, the server, and a second device.

Names that differ only in Unicode normalisation (NFC 'café' and NFD 'café') or only in case are
different files everywhere; names of exactly 255 bytes (in 1-, 2- and 4-byte characters), emoji,
leading, trailing and doubled spaces and leading dashes survive unchanged; 256 bytes is ENAMETOOLONG.
"""

from __future__ import annotations

import errno
import os
import unicodedata

import pytest

from tests.reliability.helpers import (
    converge,
    flush_until_ok,
    sha,
    two_devices,
    wait_for,
)

NFC = unicodedata.normalize("NFC", "café.txt")
NFD = unicodedata.normalize("NFD", "café.txt")

FILES = [
    NFC, NFD,
    "Readme.md", "README.md", "readme.md",
    "L" * 251 + ".txt",                # 255 bytes of ASCII
    "é" * 125 + "x.txt",               # 255 bytes of 2-byte characters
    "😀" * 63 + "abc",                 # 255 bytes, mostly 4-byte characters
    "📁 notes 🎉.md", "👩‍👩‍👧 family (ZWJ).txt", "flag 🇫🇷.txt",
    " leading space", "trailing space ", "two  spaces.txt", "-", "-rf", "--help", "-- -x",
    "Ωμέγα ЖЖ 日本語 עברית.txt",
]
FOLDERS = [unicodedata.normalize("NFD", "Réunion dir"), unicodedata.normalize("NFC", "Réunion dir"),
           "🗂 -dashes and  spaces "]


def content(name: str) -> bytes:
    return name.encode("utf-8") * 3 + b"\n"


def raw_listing(path) -> set[bytes]:
    return set(os.listdir(os.fsencode(path)))


def test_odd_names_round_trip_to_a_second_device(server, tmp_path, counts):
    assert NFC != NFD
    for name in FILES + FOLDERS:
        assert len(name.encode()) <= 255, name
    with two_devices(server, tmp_path, server.add_user(), "names") as (a, b, view):
        os.listdir(b.path)
        expected: dict[str, bytes] = {}
        for folder in FOLDERS:
            (a.path / folder).mkdir()
        for where in ["", FOLDERS[0] + "/", FOLDERS[2] + "/"]:
            for f in FILES:
                (a.path / (where + f)).write_bytes(content(where + f))
                expected[where + f] = content(where + f)
        # renamed into an odd name, and from NFC to NFD of the same text
        (a.path / "plain.txt").write_bytes(b"plain")
        os.rename(a.path / "plain.txt", a.path / FOLDERS[1] / "—ünïcödé— -x .txt")
        expected[FOLDERS[1] + "/—ünïcödé— -x .txt"] = b"plain"

        with pytest.raises(OSError) as too_long:
            (a.path / ("x" * 256)).write_bytes(b"")
        assert too_long.value.errno == errno.ENAMETOOLONG
        with pytest.raises(OSError) as too_long:
            (a.path / ("é" * 128)).write_bytes(b"")
        assert too_long.value.errno == errno.ENAMETOOLONG

        # the mount itself lists every name with exactly the bytes it was given
        top = {f.encode() for f in FILES} | {f.encode() for f in FOLDERS}
        assert raw_listing(a.path) - {b"Shared with me"} == top
        flush_until_ok(a)

        # the server holds them as given: nothing normalised, nothing case-folded, nothing trimmed
        nodes = view.nodes()
        files = {p for p, n in nodes.items() if n["kind"] == "file"}
        assert files == set(expected), (sorted(files - set(expected)), sorted(set(expected) - files))
        assert {p for p, n in nodes.items() if n["kind"] == "dir"} == set(FOLDERS)
        for path, data in expected.items():
            assert view.content(nodes[path]) == data, path

        # device B sees the same bytes under the same names
        wait_for(lambda: raw_listing(b.path) - {b"Shared with me"} == top, 20, "names on B")
        for path, data in expected.items():
            assert (b.path / path).read_bytes() == data, path
        assert raw_listing(b.path / FOLDERS[0]) == {f.encode() for f in FILES}

        # and back: B renames across normalisation forms and case; A follows
        os.rename(b.path / NFC, b.path / FOLDERS[2] / "CAFÉ.TXT")
        os.rename(b.path / "readme.md", b.path / FOLDERS[0] / unicodedata.normalize("NFD", "résumé.md"))
        expected[FOLDERS[2] + "/CAFÉ.TXT"] = expected.pop(NFC)
        expected[FOLDERS[0] + "/" + unicodedata.normalize("NFD", "résumé.md")] = expected.pop("readme.md")
        flush_until_ok(b)
        tree = converge([a, b], view)
        assert {p for p, v in tree.items() if v != "dir"} == set(expected)
        assert all(tree[p] == sha(d) for p, d in expected.items())
        assert (a.path / NFD).read_bytes() == content(NFD)  # its NFC twin moved; the NFD one stayed
        counts.add(fuzz_cases=len(FILES) * 3 + len(FOLDERS), files_verified=3 * len(expected))
