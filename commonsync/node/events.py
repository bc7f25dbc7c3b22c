"""A Node's event stream: what happened, for :meth:`Node.events` (and so the daemon's
``GET /events``).

Every subscriber gets its own bounded buffer; one that does not keep up loses events (and is
told how many) rather than slowing the node down. The last events are kept so that a new
subscriber, or ``status``, can see what just happened.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

#: Events kept for new subscribers, and buffered per subscriber.
RECENT = 200
BUFFER = 1000


class EventBus:
    def __init__(self) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._serial = 0

    def publish(self, folder: str, kind: str, **fields: str) -> None:
        self._serial += 1
        event: dict[str, Any] = {
            "serial": self._serial,
            "time": time.time(),
            "folder": folder,
            "kind": kind,
            **{k: v for k, v in fields.items() if v},
        }
        self.recent.append(event)
        for subscriber in list(self._subscribers):
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                subscriber.send_nowait(event)

    async def subscribe(self, *, replay: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Events as they happen (after the recent ones, with ``replay``), until the caller
        stops iterating."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](BUFFER)
        self._subscribers.add(send)
        try:
            if replay:
                for event in list(self.recent):
                    yield event
            async with receive:
                async for event in receive:
                    yield event
        finally:
            self._subscribers.discard(send)
            send.close()
