"""Test helpers for discovery: a fake clock, a recording Observer, polling with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingObserver:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str, float]] = []
        self.errors: list[str] = []

    def retry(self, upstream: str, reason: str) -> None: ...
    def retry_budget_exhausted(self, upstream: str) -> None: ...
    def breaker_state(self, upstream: str, state: str) -> None: ...
    def rejected(self, upstream: str, reason: str) -> None: ...
    def fallback(self, upstream: str, kind: str, reason: str) -> None: ...
    def endpoints(self, upstream: str, healthy: int, ejected: int) -> None: ...

    def discovery_update(self, upstream: str, source: str, timestamp: float) -> None:
        self.updates.append((upstream, source, timestamp))

    def discovery_error(self, source: str) -> None:
        self.errors.append(source)


async def eventually(predicate: Callable[[], bool], within: float = 3.0) -> None:
    """Poll `predicate` until true; fail after `within` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
