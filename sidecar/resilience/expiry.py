"""A lean `asyncio.timeout` for the data path.

`asyncio.timeout()` costs an object, two coroutine objects (`__aenter__`/`__aexit__`), a
reschedule and a `current_task()` lookup per use; the deadline and retry layers use one per
request each. `Expiry` keeps the same semantics (cancel the task when the time is up, turn
that cancellation, and only that one, into a timeout; withdraw its cancel request) with plain
method calls, and its timers share one loop timer through a `TimerQueue`: arming is a heap
push, disarming sets a flag. Nearly every timer is disarmed long before it is due (a request
answers in milliseconds, its deadline is seconds away), so a per-request libuv timer would be
started and stopped for nothing."""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol, cast

from sidecar.transport.driver import running_task

# Disarmed entries tolerated in a queue before a compaction is considered.
COMPACT_MIN = 256


class TimerQueue:
    """Due times in a heap, one loop timer armed for the earliest. Disarmed entries are
    dropped lazily: when they come due, or in a compaction once they are the majority, so the
    heap holds at most about twice the armed entries (plus a small constant)."""

    __slots__ = ("_armed_at", "_disarmed", "_handle", "_heap", "_seq", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Expiry]] = []
        self._seq = 0  # ties broken by arming order, never by comparing Expiry objects
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._disarmed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, delay: float, expiry: Expiry) -> None:
        when = self.loop.time() + delay
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, expiry))
        if when < self._armed_at:
            self._arm(when)

    def disarmed(self) -> None:
        self._disarmed += 1
        if self._disarmed > COMPACT_MIN and self._disarmed * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].armed]
            heapq.heapify(self._heap)
            self._disarmed = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        heap, now = self._heap, self.loop.time()
        while heap and heap[0][0] <= now:
            expiry = heapq.heappop(heap)[2]
            if expiry.armed:
                expiry.fire()
            elif self._disarmed > 0:
                self._disarmed -= 1
        if heap:
            self._arm(heap[0][0])


class LoopRef:
    """The running loop and its timer queue, looked up once per loop rather than per request
    (`get_running_loop()` is a `getpid()` syscall each time on Python 3.11)."""

    __slots__ = ("_loop", "_timers")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: TimerQueue | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            # First use, or a new loop (tests run one per test): a stopped cached loop can't
            # be the one running this code.
            loop = self._loop = asyncio.get_running_loop()
            self._timers = TimerQueue(loop)
        return loop

    def timers(self) -> TimerQueue:
        self.get()
        assert self._timers is not None
        return self._timers


class Hold:
    """Asked when an Expiry comes due whether the time really is up: returns the seconds to
    wait longer (> 0), or 0.0 to fire now. Only requests whose body was still arriving when
    their timer was armed carry one (time spent waiting on the client is not the upstream's
    time); everything else fires as is."""

    __slots__ = ()

    def postpone(self) -> float:
        return 0.0


class Cancellable(Protocol):
    """What Expiry needs of the running task: an asyncio.Task, or the transport's Driver."""

    def cancel(self, msg: object = None) -> bool: ...
    def cancelling(self) -> int: ...
    def uncancel(self) -> int: ...


class Expiry:
    __slots__ = ("_cancelling", "_fired", "_hold", "_queue", "_task", "armed")

    def __init__(self, timers: TimerQueue, delay: float, hold: Hold | None = None) -> None:
        task = running_task(timers.loop)
        if task is None:
            raise RuntimeError("Expiry must be used inside a task")
        self._task = cast(Cancellable, task)
        self._cancelling = self._task.cancelling()
        self._fired = False
        self._queue = timers
        self._hold = hold
        self.armed = True
        timers.push(delay, self)

    def fire(self) -> None:
        hold = self._hold
        if hold is not None:
            later = hold.postpone()
            if later > 0.0:
                self._queue.push(later, self)  # still armed: one more heap entry
                return
        self.armed = False
        self._fired = True
        self._task.cancel()

    def close(self) -> bool:
        """Disarm. True if the time ran out: the CancelledError now unwinding the task is
        ours (withdrawn here) and should become a timeout, unless someone else also
        cancelled the task, in which case that cancellation wins (as in asyncio.timeout)."""
        if self.armed:
            self.armed = False
            self._queue.disarmed()
            return False
        if self._fired:
            self._fired = False
            return self._task.uncancel() <= self._cancelling
        return False
