"""The write-back yields the FUSE thread to a burst of requests, but only for so long (virtual clock)."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from mountfs.syncer import QUIET_MAX_S, QUIET_S, Syncer


def _syncer() -> tuple[Syncer, SimpleNamespace]:
    vfs = SimpleNamespace(last_request=0.0)
    return Syncer(vfs, tree=None, remote=None, transfer=None, device="test"), vfs  # type: ignore[arg-type]


async def _requests(vfs: SimpleNamespace, every: float, until: float) -> None:
    """A program's burst: one FUSE request every `every` seconds until `until`."""
    while trio.current_time() < until:
        vfs.last_request = trio.current_time()
        await trio.sleep(every)


def test_waits_for_the_burst_to_pause():
    async def main() -> None:
        syncer, vfs = _syncer()
        syncer._pass_start = trio.current_time()
        end = trio.current_time() + 0.5
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_requests, vfs, 0.01, end)
            await trio.lowlevel.checkpoint()
            await syncer._quiet_moment()
            assert vfs.last_request >= end - 0.01  # the burst was over
            assert trio.current_time() >= vfs.last_request + QUIET_S

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_steady_stream_gets_at_most_half_of_the_time():
    async def main() -> None:
        syncer, vfs = _syncer()
        start = trio.current_time()
        syncer._pass_start = start
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_requests, vfs, 0.01, start + 60)
            await trio.lowlevel.checkpoint()
            await syncer._quiet_moment()  # the first wait: the whole allowance, never longer
            assert trio.current_time() - start <= QUIET_MAX_S + 0.02
            steps = 0
            for _ in range(20):  # each step works 0.2 s, then may wait about as long again
                await trio.sleep(0.2)
                await syncer._quiet_moment()
                steps += 1
            waited, total = syncer._pass_waited, trio.current_time() - start
            assert steps == 20 and waited <= QUIET_MAX_S + (total - waited) + 0.05
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_waiting_flush_is_not_kept_waiting():
    async def main() -> None:
        syncer, vfs = _syncer()
        syncer._pass_start = trio.current_time()
        syncer._force = 1
        vfs.last_request = trio.current_time()
        before = trio.current_time()
        await syncer._quiet_moment()
        assert trio.current_time() == before

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_flush_cuts_the_debounce_short():
    async def main() -> None:
        syncer, _vfs = _syncer()
        syncer._pending = lambda: False  # type: ignore[method-assign]
        syncer.statistics = lambda: SimpleNamespace(pending_bytes=0, pending_items=0)  # type: ignore[method-assign]

        async def report(_progress) -> None:
            pass

        start = trio.current_time()
        await syncer._debounce()  # nothing asks: the whole debounce
        assert trio.current_time() - start == syncer.debounce_s
        ended = []

        async def debounce() -> None:
            await syncer._debounce()
            ended.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(debounce)
            await trio.sleep(0.03)
            await syncer.flush(report)
        assert ended == [start + 0.03]
        start = trio.current_time()
        await syncer._debounce()  # the flush is over: debouncing again
        assert trio.current_time() - start == syncer.debounce_s

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
