"""The dashboard's live feed: one poller per process, any number of browsers.

The poller reads the store's change mark (`FleetFigures.change_mark`, moved by
database triggers on every tenant and node change, whoever made it: the API, an Exec
script, another control plane process) every `poll` seconds. When it moved, or every
`refresh` seconds for the nodes' heartbeat figures, it recomputes the summary and
sends it to every subscriber if it differs from the last one sent.

On PostgreSQL the mark is a sequence, advanced when the writing statement runs, so
it can move before that transaction commits; the poller therefore keeps recomputing
for `settle` seconds after each move, and the committed change is sent then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from hoody.dashboard.figures import FleetFigures

__all__ = ["LiveFeed"]

log = logging.getLogger(__name__)


class LiveFeed:
    def __init__(
        self,
        figures: FleetFigures,
        *,
        poll: float = 0.1,
        refresh: float = 2.0,
        settle: float = 1.0,
    ) -> None:
        self.figures = figures
        self.poll = poll
        self.refresh = refresh
        self.settle = settle
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: str | None = None
        # (change mark, monotonic time, summary JSON) of the latest computation
        self._latest: tuple[int, float, str] | None = None

    def _read(self) -> tuple[int, str]:
        mark = self.figures.change_mark()
        payload = json.dumps(self.figures.summary(), sort_keys=True)
        self._latest = (mark, time.monotonic(), payload)
        return mark, payload

    async def _compute(self) -> tuple[int, str]:
        return await anyio.to_thread.run_sync(self._read)

    def latest(self) -> str:
        """The summary (JSON text) as of now: the latest one computed when nothing has
        changed since and it is younger than `refresh` (the age the poller lets
        heartbeat figures reach anyway), else a new one. Blocking: call it from a
        worker thread. A page reads it to draw, then opens its feed and reads it
        again; over 10,000 tenants each read is a GROUP BY over every row."""
        latest = self._latest
        if (
            latest is not None
            and time.monotonic() - latest[1] < self.refresh
            and self.figures.change_mark() == latest[0]
        ):
            return latest[2]
        return self._read()[1]

    async def _run(self) -> None:
        mark = -1
        settle_until = 0.0
        next_refresh = 0.0
        while self._subscribers:
            try:
                now = time.monotonic()
                current = await anyio.to_thread.run_sync(self.figures.change_mark)
                if current != mark:
                    settle_until = now + self.settle
                if current != mark or now < settle_until or now >= next_refresh:
                    mark = current
                    next_refresh = now + self.refresh
                    _, payload = await self._compute()
                    if payload != self._last:
                        self._last = payload
                        self._publish(payload)
            except Exception:
                log.exception("dashboard live feed: reading the fleet failed")
            await asyncio.sleep(self.poll)
        self._task = None

    def _publish(self, payload: str) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a slow browser gets the newest state, not a backlog
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(payload)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of summaries (JSON text): the current one at once, then each change.
        A slow reader finds only the newest one waiting, never a backlog."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._subscribers.add(queue)
        try:
            first = await anyio.to_thread.run_sync(self.latest)
            if queue.empty():
                queue.put_nowait(first)
            if self._task is None:
                self._task = asyncio.create_task(self._run())
            yield queue
        finally:
            self._subscribers.discard(queue)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; `data` is JSON text or an object to encode."""
    body = data if isinstance(data, str) else json.dumps(data)
    return f"event: {event}\ndata: {body}\n\n".encode()
