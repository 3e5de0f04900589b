"""The changes feed: ordered entries per user, cursor paging, long-poll wake-up and timeout, cursors that
survive a restart, and what recipients of a share see."""

from __future__ import annotations

import threading
import time

import httpx

from tests.server.conftest import Drive, drive_on, ok, random_chunks


def _feed(d: Drive, cursor: str = "0", **params) -> dict:
    return ok(d.get("/changes", params={"cursor": cursor, **params}))


def _all(d: Drive, cursor: str = "0") -> list[dict]:
    out = []
    while True:
        page = _feed(d, cursor, limit=5000)
        out += page["changes"]
        cursor = page["cursor"]
        if not page["has_more"]:
            return out


def _kinds(changes: list[dict]) -> list[tuple[str, int]]:
    return [(c["kind"], c["node"]["id"]) for c in changes]


def test_changes_in_order(alice):
    assert _feed(alice) == {"changes": [], "cursor": "0", "has_more": False}
    d = ok(alice.post("/folders", {"parent_id": alice.root, "name": "d"}, headers={"X-Drive-Device": "desk"}), 201)
    e = alice.mkdir(alice.root, "e")
    f = alice.commit(d["id"], "f", random_chunks(1), device="laptop")
    ok(alice.update(f, random_chunks(1)))
    ok(alice.move(f["id"], e["id"], "g", headers={"X-Drive-Device": "phone"}))
    ok(alice.patch(f"/nodes/{e['id']}", {"mode": 0o700}))
    ok(alice.delete(f"/nodes/{f['id']}"))
    ok(alice.post(f"/nodes/{f['id']}/restore", {}))

    changes = _all(alice)
    assert _kinds(changes) == [("create", d["id"]), ("create", e["id"]), ("create", f["id"]), ("update", f["id"]),
                               ("move", f["id"]), ("update", e["id"]), ("delete", f["id"]), ("create", f["id"])]
    seqs = [c["seq"] for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    create, update, move = changes[2], changes[3], changes[4]
    assert (create["node"]["name"], create["node"]["version"], create["device"]) == ("f", 1, "laptop")
    assert update["node"]["version"] == 2
    assert (move["old_parent_id"], move["old_name"], move["node"]["parent_id"], move["node"]["name"]) == (
        d["id"], "f", e["id"], "g")
    assert move["device"] == "phone" and changes[0]["device"] == "desk" and changes[1]["device"] is None
    assert changes[6]["node"]["deleted"] is True
    assert all(c["at_ns"] > 0 and c["node"]["access"] == "owner" for c in changes)
    # the cursor is the last seq seen; reading on from it gives nothing new
    page = _feed(alice)
    assert page["cursor"] == str(seqs[-1])
    assert _feed(alice, page["cursor"])["changes"] == []
    assert int(ok(alice.get("/changes/latest"))["cursor"]) >= seqs[-1]


def test_cursor_paging(alice):
    for i in range(7):
        alice.mkdir(alice.root, f"d{i}")
    whole = _feed(alice, limit=100)["changes"]
    assert len(whole) == 7
    got, cursor, pages = [], "0", []
    while True:
        page = _feed(alice, cursor, limit=3)
        got += page["changes"]
        pages.append((len(page["changes"]), page["has_more"]))
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert pages == [(3, True), (3, True), (1, False)]
    assert got == whole
    assert cursor == str(whole[-1]["seq"])


def test_long_poll_wakes_on_a_change(alice):
    cursor = _feed(alice)["cursor"]
    result: dict = {}

    def poll() -> None:
        with alice.server.client(alice.token) as c:
            result["response"] = c.get("/api/v1/changes", params={"cursor": cursor, "wait": 10})
            result["at"] = time.monotonic()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)  # let the poll reach its wait
    assert "response" not in result
    changed_at = time.monotonic()
    d = alice.mkdir(alice.root, "wake-up")
    t.join(15)
    assert not t.is_alive()
    page = result["response"].json()
    assert _kinds(page["changes"]) == [("create", d["id"])]
    assert result["at"] - changed_at < 1.0, f"long-poll answered {result['at'] - changed_at:.2f}s after the change"


def test_a_device_can_leave_its_own_changes_out(alice):
    start = _feed(alice)["cursor"]
    laptop = {"X-Drive-Device": "laptop"}
    own = ok(alice.post("/folders", {"parent_id": alice.root, "name": "mine"}, headers=laptop), 201)
    other = ok(alice.post("/folders", {"parent_id": alice.root, "name": "theirs"}, headers={"X-Drive-Device": "phone"}),
               201)
    anonymous = alice.mkdir(alice.root, "no-device")
    f = alice.commit(own["id"], "f", random_chunks(1), device="laptop")

    everything = _feed(alice, start)
    page = _feed(alice, start, exclude_device="laptop")
    assert _kinds(page["changes"]) == [("create", other["id"]), ("create", anonymous["id"])]
    assert page["cursor"] == everything["cursor"]  # moved past its own changes all the same
    assert len(everything["changes"]) == 4

    # Nothing but its own changes since the cursor: a long-poll answers none, and a cursor past them.
    cursor = page["cursor"]
    ok(alice.patch(f"/nodes/{f['id']}", {"mode": 0o600}, headers=laptop))
    quiet = _feed(alice, cursor, exclude_device="laptop", wait=0.5)
    assert quiet["changes"] == [] and int(quiet["cursor"]) > int(cursor)
    assert _kinds(_feed(alice, cursor)["changes"]) == [("update", f["id"])]  # still there for the others


def test_long_poll_is_not_woken_by_other_users(alice, bob):
    cursor = _feed(alice)["cursor"]
    t0 = time.monotonic()
    result: dict = {}

    def poll() -> None:
        with alice.server.client(alice.token) as c:
            result["page"] = c.get("/api/v1/changes", params={"cursor": cursor, "wait": 1.5}).json()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    bob.mkdir(bob.root, "not-alices")
    t.join(10)
    elapsed = time.monotonic() - t0
    assert result["page"] == {"changes": [], "cursor": cursor, "has_more": False}
    assert 1.4 <= elapsed < 3.5


def test_long_poll_times_out_empty(alice):
    alice.mkdir(alice.root, "before")
    cursor = _feed(alice)["cursor"]
    t0 = time.monotonic()
    page = _feed(alice, cursor, wait=1)
    elapsed = time.monotonic() - t0
    assert page == {"changes": [], "cursor": cursor, "has_more": False}
    assert 0.9 <= elapsed < 3.0
    # with something already newer, wait does not wait
    t0 = time.monotonic()
    assert len(_feed(alice, "0", wait=10)["changes"]) == 1
    assert time.monotonic() - t0 < 1.0


def test_cursors_survive_a_restart(fresh_server):
    d = drive_on(fresh_server)
    d.mkdir(d.root, "a")
    d.mkdir(d.root, "b")
    before = _all(d)
    cursor = str(before[-1]["seq"])
    fresh_server.stop()
    fresh_server.start()
    c = d.mkdir(d.root, "c")
    after = _feed(d, cursor)["changes"]
    assert _kinds(after) == [("create", c["id"])]
    assert after[0]["seq"] > int(cursor)
    assert _all(d) == before + after
    d.close()


def test_recipient_sees_changes_inside_a_share(make_drive):
    alice, bob = make_drive(), make_drive()
    s = alice.mkdir(alice.root, "S")
    other = alice.mkdir(alice.root, "private")
    assert _feed(bob)["changes"] == []

    ok(alice.post(f"/nodes/{s['id']}/shares", {"user": bob.name, "permission": "read"}), 201)
    f = alice.commit(s["id"], "f", random_chunks(1))
    alice.commit(other["id"], "secret", random_chunks(1))  # outside the share: bob must not see it
    ok(alice.update(f, random_chunks(1)))
    ok(alice.move(f["id"], other["id"], "f-moved-out"))  # leaves bob's sight
    g = alice.commit(other["id"], "g", random_chunks(1))
    ok(alice.move(g["id"], s["id"], "g"))  # enters bob's sight
    ok(alice.delete(f"/nodes/{f['id']}"))  # no longer visible to bob: nothing for him
    ok(alice.delete(f"/nodes/{s['id']}/shares/{bob.name}"), 204)
    alice.mkdir(s["id"], "after-unshare")

    changes = _all(bob)
    assert _kinds(changes) == [("share", s["id"]), ("create", f["id"]), ("update", f["id"]), ("delete", f["id"]),
                               ("create", g["id"]), ("unshare", s["id"])]
    out = changes[3]
    # what bob learns about a node that left his sight is where it was, never where it went
    assert out["node"]["parent_id"] == s["id"] and out["node"]["name"] == "f"
    assert all(c["node"]["access"] == "read" for c in changes)
    assert all(c["node"]["name"] != "secret" for c in changes)

    mine = _all(alice)
    moved_out = [c for c in mine if c["node"]["id"] == f["id"] and c["kind"] == "move"]
    assert moved_out and moved_out[0]["node"]["name"] == "f-moved-out" and moved_out[0]["old_parent_id"] == s["id"]


def test_write_recipient_changes_reach_the_owner(make_drive):
    alice, bob = make_drive(), make_drive()
    s = alice.mkdir(alice.root, "S")
    ok(alice.post(f"/nodes/{s['id']}/shares", {"user": bob.name, "permission": "write"}), 201)
    cursor = _feed(alice)["cursor"]
    f = bob.commit(s["id"], "from-bob", random_chunks(1), device="bobs-pc")
    changes = _feed(alice, cursor)["changes"]
    assert _kinds(changes) == [("create", f["id"])]
    assert changes[0]["node"]["owner"] == alice.name and changes[0]["device"] == "bobs-pc"
    assert changes[0]["node"]["access"] == "owner"


def test_stopping_the_server_answers_open_long_polls(fresh_server):
    d = drive_on(fresh_server)
    cursor = _feed(d)["cursor"]
    result: dict = {}

    def poll() -> None:
        with fresh_server.client(d.token) as c:
            try:
                result["response"] = c.get("/api/v1/changes", params={"cursor": cursor, "wait": 30})
            except httpx.HTTPError as e:
                result["error"] = e

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)  # let the poll reach its wait
    fresh_server.stop()
    t.join(15)
    assert not t.is_alive()
    # Answered (empty, cursor unchanged) rather than cut off when the graceful-shutdown timeout ran out.
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert result["response"].json()["changes"] == []
    d.close()
