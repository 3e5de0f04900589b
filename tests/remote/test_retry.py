"""The retry loop, on a mock transport under trio's MockClock (no real sleeping), and on a real server
that goes away and comes back."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
import trio

from remote import errors
from remote.client import ApiClient, RetryPolicy
from tests.fixtures.server import ServerProcess

ME = {"id": 1, "name": "a", "root_id": 1}


def scripted(*steps):
    """A MockTransport answering with the steps in turn (an int status, a Response, or an exception class)."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        step = steps[min(len(calls), len(steps) - 1)]
        calls.append(request)
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("scripted failure", request=request)
        if isinstance(step, httpx.Response):
            return step
        if step == 200:
            return httpx.Response(200, json=ME)
        return httpx.Response(step, json={"error": {"code": "x", "message": "scripted", "details": {}}})

    return httpx.MockTransport(handler), calls


def client(transport, **policy) -> ApiClient:
    return ApiClient("http://drive.test", "secret-token", retry=RetryPolicy(**policy), transport=transport)


def test_backoff_is_full_jitter_within_the_cap():
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=4.0)
    rng = random.Random(1)
    for failures, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 4.0), (50, 4.0), (10_000, 4.0)]:
        delays = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the whole range, not a fixed delay


async def test_5xx_then_success(autojump_clock):
    transport, calls = scripted(503, 502, 500, 200)
    async with client(transport) as api:
        assert (await api.me()).name == "a"
        assert api.statistics().retries == 3 and len(calls) == 4
    assert all(c.headers["Authorization"] == "Bearer secret-token" for c in calls)


async def test_retry_after_is_honoured(autojump_clock):
    transport, calls = scripted(httpx.Response(429, headers={"Retry-After": "7"}), 200)
    async with client(transport) as api:
        start = trio.current_time()
        await api.me()
        assert trio.current_time() - start >= 7
    assert len(calls) == 2


async def test_gives_up_at_the_time_budget(autojump_clock):
    transport, calls = scripted(500)
    async with client(transport, max_total_s=20.0) as api:
        start = trio.current_time()
        with pytest.raises(errors.ServerError) as info:
            await api.me()
        elapsed = trio.current_time() - start
    assert 19.9 <= elapsed <= 20.1  # the last wait is cut to end at the deadline, and one more try is made
    assert info.value.status == 500 and "gave up after" in str(info.value)
    assert len(calls) > 5


async def test_gives_up_at_max_attempts(autojump_clock):
    transport, calls = scripted(httpx.ConnectError)
    async with client(transport, max_attempts=4) as api:
        with pytest.raises(errors.TransportFailure) as info:
            await api.me()
    assert len(calls) == 4
    msg = str(info.value)
    assert "cannot reach the server at http://drive.test (GET /api/v1/me)" in msg and "4 attempts" in msg
    assert "secret-token" not in msg


async def test_right_after_giving_up_on_an_unreachable_server_requests_are_tried_once(autojump_clock):
    """A mount's reader makes many requests in a row once the server is gone (the kernel asks again page
    by page after a failed read): only the first waits out the budget; the server back, all go through."""
    state = {"up": False}
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(trio.current_time())
        if not state["up"]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=ME)

    async with client(httpx.MockTransport(handler), max_total_s=8.0) as api:
        start = trio.current_time()
        with pytest.raises(errors.TransportFailure):
            await api.me()
        assert trio.current_time() - start >= 7.9 and len(calls) > 3
        for _ in range(3):
            before, asked = len(calls), trio.current_time()
            with pytest.raises(errors.TransportFailure):
                await api.me()
            assert len(calls) == before + 1 and trio.current_time() == asked  # one try, no waiting
        state["up"] = True
        assert (await api.me()).name == "a"  # tried once, and it answered: no spurious failure
        state["up"] = False
        await trio.sleep(3)  # long after the last give-up: the whole budget again
        before, start = len(calls), trio.current_time()
        with pytest.raises(errors.TransportFailure):
            await api.me()
        assert trio.current_time() - start >= 7.9 and len(calls) > before + 3


async def test_4xx_is_not_retried(autojump_clock):
    transport, calls = scripted(404)
    async with client(transport) as api:
        with pytest.raises(errors.NotFound):
            await api.get_node(5)
    assert len(calls) == 1


async def test_unsafe_post_retried_only_when_not_applied(autojump_clock):
    # Never connected: safe to send again.
    transport, calls = scripted(httpx.ConnectError, httpx.ConnectTimeout, 503,
                                httpx.Response(201, json={**NODE}))
    async with client(transport) as api:
        await api.create_folder(1, "x")
    assert len(calls) == 4
    # The request went out and the answer was lost: it may have been applied, so no retry.
    for failure in (httpx.ReadTimeout, httpx.RemoteProtocolError, 500):
        transport, calls = scripted(failure, httpx.Response(201, json={**NODE}))
        async with client(transport) as api:
            with pytest.raises((errors.TransportFailure, errors.ServerError)) as info:
                await api.commit_file([], 0, parent_id=1, name="f")
        assert len(calls) == 1 and info.value.maybe_applied


async def test_idempotent_requests_retry_lost_answers(autojump_clock):
    transport, calls = scripted(httpx.ReadTimeout, httpx.RemoteProtocolError, 500, httpx.Response(200, json=NODE))
    async with client(transport) as api:
        await api.commit_upload("sid")
    assert len(calls) == 4


async def test_blob_requests_carry_no_token(autojump_clock):
    transport, calls = scripted(httpx.Response(201), httpx.Response(200, content=b"abc",
                                                                    headers={"X-Drive-Encoding": "none"}))
    async with client(transport) as api:
        await api.put_blob("/blobs/h?sig=1", b"abc")
        assert await api.get_blob("https://store.test/b/h?X-Amz-Signature=2") == ("none", b"abc")
    assert [str(c.url) for c in calls] == ["http://drive.test/blobs/h?sig=1", "https://store.test/b/h?X-Amz-Signature=2"]
    assert all("Authorization" not in c.headers for c in calls)


NODE = {"id": 2, "parent_id": 1, "owner": "a", "name": "x", "kind": "dir", "mode": 0o755, "mtime_ns": 1,
        "ctime_ns": 1, "size": 0, "version": 0}


def _restart_later(srv: ServerProcess, after_s: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after_s)
        srv.start()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def test_rides_out_a_server_restart(fresh_server, tmp_path):
    from remote.transfer import Transfer
    from tests.remote.helpers import write_random

    _name, token = fresh_server.add_user()
    async with ApiClient(fresh_server.url, token, retry=RetryPolicy(max_total_s=20.0)) as api:
        me = await api.me()
        fresh_server.stop()
        thread = _restart_later(fresh_server, 2.0)
        start = time.monotonic()
        assert await api.me() == me
        assert time.monotonic() - start >= 1.5 and api.statistics().retries >= 1
        thread.join()

        # A whole upload started while the server is down completes once it is back.
        src = write_random(tmp_path / "f", 3 * 2**20)
        fresh_server.stop()
        thread = _restart_later(fresh_server, 2.0)
        node = await Transfer(api).upload_file(src, parent_id=me.root_id, name="f")
        thread.join()
        assert node.size == 3 * 2**20


async def test_server_down_past_the_budget(fresh_server):
    _name, token = fresh_server.add_user()
    fresh_server.stop()
    async with ApiClient(fresh_server.url, token, retry=RetryPolicy(max_total_s=1.5)) as api:
        start = time.monotonic()
        with pytest.raises(errors.TransportFailure) as info:
            await api.me()
        elapsed = time.monotonic() - start
    assert 1.4 <= elapsed < 5
    msg = str(info.value)
    assert msg.startswith(f"cannot reach the server at {fresh_server.url} (GET /api/v1/me): ConnectError")
    assert "gave up after" in msg and token not in msg
    assert not info.value.maybe_applied
