"""Concurrent workers that fail like one call: the first worker's own exception, not an ExceptionGroup."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio

__all__ = ["worker_nursery"]


@asynccontextmanager
async def worker_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure is raised as the first worker's own exception (e.g. CorruptChunk), not as
    an ExceptionGroup: when one worker fails the others are cancelled, and callers catch our error types.
    Groups holding anything but ordinary exceptions (KeyboardInterrupt, ...) pass through unchanged."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if not leaves or not all(isinstance(e, Exception) for e in leaves):
            raise
        first = leaves[0]
        if first.__cause__ is None:
            first.__suppress_context__ = True
        raise first


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
