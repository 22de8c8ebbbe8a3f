"""Runs a connection's serving coroutine without an `asyncio.Task`.

A Task per request costs ~3.7 µs on Python 3.11, most of it registering in (and leaving)
asyncio's `_all_tasks` WeakSet in interpreted code. `Driver` steps the coroutine itself:
`send(None)`, then wait on the future it yields through `add_done_callback`, as a Task does.
It offers what the data path asks of a Task: it is `asyncio.current_task()` while it runs a
step (so `Expiry` and `asyncio.timeout()` find it), and `cancel` / `uncancel` /
`cancelling` / `done` behave as the Task's do. It runs in the loop callback's context: the
request path sets no context variables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

log = logging.getLogger("sidecar.transport")

# The C functions behind current_task(): they store any object as the loop's current task.
_TaskSwitch = Callable[[asyncio.AbstractEventLoop, object], None]
_enter_task = cast(_TaskSwitch, asyncio.tasks._enter_task)
_leave_task = cast(_TaskSwitch, asyncio.tasks._leave_task)
# The dict those functions write: reading it is what `asyncio.current_task(loop)` does, but
# that is interpreted code on Python 3.11 (a function call per timer armed on the data path).
_current_tasks: dict[asyncio.AbstractEventLoop, object] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)


def running_task(loop: asyncio.AbstractEventLoop) -> object | None:
    """The task (or Driver) running on `loop` now, as `asyncio.current_task(loop)`."""
    if _current_tasks is None:
        return asyncio.current_task(loop)
    return _current_tasks.get(loop)


class Driver:
    __slots__ = ("_coro", "_done", "_loop", "_must_cancel", "_num_cancels", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
        self._loop = loop
        self._coro = coro
        self._waiter: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self._num_cancels = 0
        self._done = False
        # Not run inline: the caller is inside the parser's callbacks.
        loop.call_soon(self._step, None)

    def done(self) -> bool:
        return self._done

    def cancelling(self) -> int:
        return self._num_cancels

    def uncancel(self) -> int:
        if self._num_cancels > 0:
            self._num_cancels -= 1
        return self._num_cancels

    def cancel(self, msg: Any = None) -> bool:
        if self._done:
            return False
        self._num_cancels += 1
        waiter = self._waiter
        if waiter is not None and waiter.cancel(msg):
            # Its callback throws the CancelledError in.
            return True
        self._must_cancel = True
        return True

    def _step(self, exc: BaseException | None) -> None:
        if self._done:
            return
        if self._must_cancel:
            if not isinstance(exc, asyncio.CancelledError):
                exc = asyncio.CancelledError()
            self._must_cancel = False
        self._waiter = None
        loop = self._loop
        _enter_task(loop, self)
        try:
            result = self._coro.send(None) if exc is None else self._coro.throw(exc)
        except StopIteration:
            self._done = True
        except asyncio.CancelledError:
            self._done = True
        except (KeyboardInterrupt, SystemExit):
            self._done = True
            raise
        except BaseException:
            self._done = True
            log.exception("connection task failed")
        else:
            self._wait_on(result)
        finally:
            _leave_task(loop, self)

    def _wait_on(self, result: Any) -> None:
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking:
            result._asyncio_future_blocking = False
            result.add_done_callback(self._wakeup)
            self._waiter = result
            if self._must_cancel and result.cancel():
                self._must_cancel = False
        elif result is None:
            # A bare yield (asyncio.sleep(0)): run again on the next loop pass.
            self._loop.call_soon(self._step, None)
        else:
            err = RuntimeError(f"the connection coroutine yielded {result!r}, not a future")
            self._loop.call_soon(self._step, err)

    def _wakeup(self, fut: asyncio.Future[Any]) -> None:
        try:
            fut.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step(None)
