"""Two server processes on one PostgreSQL and one S3 store: either serves any user, a change made through one
wakes long-polls held by the other (LISTEN/NOTIFY), and chunks uploaded through one download through the other."""

from __future__ import annotations

import time

import psycopg
import pytest
import trio

from remote.transfer import Transfer
from tests.remote.conftest import connect
from tests.remote.helpers import same_file, write_random

pytestmark = pytest.mark.needs_scaled

# A change is announced at commit; a long-poll on the other server should answer well within this.
WAKE_S = 2.0


@pytest.fixture
def two_servers(scaled_server):
    first = scaled_server()
    second = scaled_server(env=dict(first.extra_env))  # same database, same bucket and prefix
    return first, second


async def _longpoll_wakes(poller, cursor: str, change) -> tuple[float, list]:
    """Hold a long-poll (wait=30) while `change()` runs elsewhere; return how long the poll took after it."""
    out: dict = {}

    async def poll() -> None:
        out["page"] = await poller.changes(cursor, wait=30)
        out["at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.5)  # the poll is waiting on its server by now
        await change()
        changed = trio.current_time()
    return out["at"] - changed, out["page"].changes


async def test_change_through_one_server_wakes_a_longpoll_on_the_other(two_servers):
    first, second = two_servers
    alice, token = first.add_user()
    bob, bob_token = second.add_user()  # users live in the shared database: either server knows both
    async with connect(first, token) as on_first, connect(second, token) as on_second, \
            connect(first, bob_token) as bob_on_first:
        me = await on_second.me()
        assert me == await on_first.me()

        cursor = await on_first.latest_cursor()
        made = {}

        async def mkdir() -> None:
            made["folder"] = await on_second.create_folder(me.root_id, "made-on-second")

        took, changes = await _longpoll_wakes(on_first, cursor, mkdir)
        assert took < WAKE_S, f"the long-poll on the first server woke {took:.2f} s after the change"
        assert [(c.kind, c.node.name) for c in changes] == [("create", "made-on-second")]

        # another user's feed wakes too: a share made through the second server, polled on the first
        bob_cursor = await bob_on_first.latest_cursor()

        async def share() -> None:
            await on_second.share(made["folder"].id, bob)

        took, changes = await _longpoll_wakes(bob_on_first, bob_cursor, share)
        assert took < WAKE_S and [c.kind for c in changes] == ["share"]


async def test_servers_ride_out_lost_database_connections(two_servers):
    """Every server connection is cut (as a database restart or failover would): requests still succeed
    (a connection found dead at BEGIN is replaced) and the listeners reconnect."""
    first, second = two_servers
    _name, token = first.add_user()
    async with connect(first, token) as on_first, connect(second, token) as on_second:
        await on_first.create_folder((await on_first.me()).root_id, "before")
        await on_second.me()
    with psycopg.connect(first.extra_env["DRIVE_DATABASE_URL"], autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid), query LIKE 'LISTEN%' FROM pg_stat_activity"
                               " WHERE datname = current_database() AND application_name = 'drivefs-server'"
                               " AND pid <> pg_backend_pid()").fetchall()
    assert sum(listener for _, listener in killed) == 2 and len(killed) > 2  # listeners and workers
    time.sleep(1.0)  # the listeners reconnect within about a second
    async with connect(first, token) as on_first, connect(second, token) as on_second:
        me = await on_first.me()
        cursor = await on_first.latest_cursor()

        async def mkdir() -> None:
            await on_second.create_folder(me.root_id, "after-reconnect")

        took, changes = await _longpoll_wakes(on_first, cursor, mkdir)
        assert took < WAKE_S and [c.node.name for c in changes] == ["after-reconnect"]


async def test_upload_through_one_download_through_the_other(two_servers, tmp_path):
    first, second = two_servers
    _name, token = first.add_user()
    src = write_random(tmp_path / "src", 5 * 2**20, seed=3)
    async with connect(first, token) as on_first, connect(second, token) as on_second:
        me = await on_second.me()
        node = await Transfer(on_second).upload_file(src, parent_id=me.root_id, name="f")
        await Transfer(on_first).download_file(await on_first.get_node(node.id), tmp_path / "back")
        assert same_file(src, tmp_path / "back")
        assert not first.blob_objects("staging")
