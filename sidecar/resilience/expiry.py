"""A lean `asyncio.timeout` for the data path.

`asyncio.timeout()` costs an object, two coroutine objects (`__aenter__`/`__aexit__`), a
reschedule and a `current_task()` lookup per use; the deadline and retry layers use one per
request each. `Expiry` keeps the same semantics (cancel the task when the time is up, turn
that cancellation, and only that one, into a timeout; withdraw its cancel request) with one
TimerHandle and plain method calls."""

from __future__ import annotations

import asyncio


class LoopRef:
    """The running loop, looked up once per loop rather than per request
    (`get_running_loop()` is a `getpid()` syscall each time on Python 3.11)."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            # First use, or a new loop (tests run one per test): a stopped cached loop can't
            # be the one running this code.
            loop = self._loop = asyncio.get_running_loop()
        return loop


class Expiry:
    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Expiry must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def close(self) -> bool:
        """Disarm. True if the time ran out: the CancelledError now unwinding the task is
        ours (withdrawn here) and should become a timeout, unless someone else also
        cancelled the task, in which case that cancellation wins (as in asyncio.timeout)."""
        self._handle.cancel()
        if self._fired:
            self._fired = False
            return self._task.uncancel() <= self._cancelling
        return False
