"""Wakes long-polling feed readers as soon as a change they can see is committed."""

from __future__ import annotations

import asyncio


class ChangeNotifier:
    """Per-user wake-up events; `notify` may be called from any thread once `bind` has run."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[int, asyncio.Event] = {}
        # Set when the server is stopping: long-polls answer at once instead of holding their connection
        # open until the graceful-shutdown timeout cuts it.
        self.closing = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def event_for(self, user_id: int) -> asyncio.Event:
        """Take the event *before* reading the feed, so a change in between is not missed."""
        ev = self._events.get(user_id)
        if ev is None:
            ev = self._events[user_id] = asyncio.Event()
        return ev

    def _wake(self, users: set[int]) -> None:
        for uid in users:
            ev = self._events.pop(uid, None)
            if ev is not None:
                ev.set()

    def _wake_all(self) -> None:
        events, self._events = self._events, {}
        for ev in events.values():
            ev.set()

    def notify(self, users: set[int]) -> None:
        if self._loop is None:
            return
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._wake, set(users))

    def notify_all(self) -> None:
        """Wake every waiting reader (after a gap in the news from other server processes)."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._wake_all)

    def close(self) -> None:
        """The server is stopping: wake every reader, and let no new one wait."""
        self.closing = True
        self.notify_all()
