"""Fan-out of engine events (job changes, telemetry, metric points, log
lines) to any number of subscribers. A subscriber that falls behind loses its
oldest events and is told how many, instead of slowing the engine down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class Subscription:
    def __init__(self, hub: EventHub, accept: Callable[[Event], bool], size: int) -> None:
        self._hub = hub
        self._accept = accept
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        event = await self.queue.get()
        if self.dropped:
            lost, self.dropped = self.dropped, 0
            return {"type": "dropped", "count": lost, "next": event}
        return event

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(
        self, accept: Callable[[Event], bool] = lambda e: True, size: int = 10_000
    ) -> Subscription:
        sub = Subscription(self, accept, size)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        """Offer `event` to every subscriber. Called for every log line (1,000 a
        second with 100 chatty jobs): free when nobody listens."""
        if not self._subs:
            return
        for sub in tuple(self._subs):  # a subscriber may unsubscribe meanwhile
            sub.offer(event)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
