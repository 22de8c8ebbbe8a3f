"""Retries: per-try timeout, safe conditions only, jittered backoff, a budget.

Safe means: a connect failure always (the upstream never saw the request); anything else only
for idempotent methods and only when the body can be sent again (it fits in
`limits.retry_buffer_bytes`). 4xx are never retried. Each retry goes to another endpoint when
one exists (the balancer avoids `request.tried`) and carries `x-sidecar-attempt`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from sidecar.clock import Clock
from sidecar.config import RetriesConfig
from sidecar.errors import SidecarError, UpstreamTimeout
from sidecar.events import Observer
from sidecar.http import Body, BytesBody, Request, Response
from sidecar.resilience.budget import RetryBudget
from sidecar.resilience.classify import Outcome, classify_error
from sidecar.resilience.deadline import stamp_remaining
from sidecar.stack import Handler

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
Sleep = Callable[[float], Awaitable[None]]


class PrefixedBody:
    """A body whose first chunks were already read (too big to buffer): not replayable."""

    def __init__(self, prefix: list[bytes], rest: AsyncIterator[bytes], length: int | None) -> None:
        self._prefix = prefix
        self._rest = rest
        self.length = length
        self.replayable = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._prefix:
            yield chunk
        async for chunk in self._rest:
            yield chunk


async def buffer_body(body: Body, limit: int) -> Body:
    """Make `body` replayable if it fits in `limit` bytes; otherwise keep it streaming."""
    if body.replayable:
        return body
    if body.length is not None and body.length > limit:
        return body
    it = body.__aiter__()
    prefix: list[bytes] = []
    size = 0
    async for chunk in it:
        prefix.append(chunk)
        size += len(chunk)
        if size > limit:
            return PrefixedBody(prefix, it, body.length)
    return BytesBody(b"".join(prefix))


def _abort(response: Response) -> None:
    abort = getattr(response.body, "abort", None)
    if abort is not None:
        abort()


class RetryLayer:
    def __init__(
        self,
        policy: RetriesConfig,
        per_try_timeout: float,
        retry_buffer_bytes: int,
        clock: Clock,
        observer: Observer,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._per_try = per_try_timeout
        self._buffer_limit = retry_buffer_bytes
        self._clock = clock
        self._observer = observer
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.budget = RetryBudget(policy.budget_ratio, policy.min_retries_per_s, clock)
        on = set(policy.on)
        self._on_status = {c for c in on if isinstance(c, int)}
        self._on_5xx = "5xx" in on
        self._on_outcome = {
            o for o in (Outcome.CONNECT_FAILURE, Outcome.RESET, Outcome.TIMEOUT) if o.value in on
        }

    def _retry_status(self, status: int) -> bool:
        return status in self._on_status or (self._on_5xx and status >= 500)

    def _backoff(self, retry: int) -> float:
        base, cap = self._policy.backoff_base, self._policy.backoff_max
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
        return self._rng.uniform(0, min(cap, base * (2 ** (retry - 1))))

    def wrap(self, inner: Handler) -> Handler:
        policy, per_try, clock, observer = self._policy, self._per_try, self._clock, self._observer
        budget = self.budget

        async def attempt(request: Request) -> Response:
            now = clock.monotonic()
            timeout = per_try
            if request.deadline is not None:
                stamp_remaining(request, now)
                timeout = min(timeout, max(request.deadline - now, 0.0))
            try:
                async with asyncio.timeout(timeout):
                    return await inner(request)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"no response within the per-try timeout ({per_try:g}s)",
                    upstream=request.upstream,
                ) from None

        async def retry(request: Request) -> Response:
            budget.record_request()
            if policy.attempts == 0:
                return await attempt(request)
            idempotent = request.method in IDEMPOTENT
            if idempotent:
                request.body = await buffer_body(request.body, self._buffer_limit)
            n = 0
            while True:
                reason = ""
                try:
                    response = await attempt(request)
                except SidecarError as err:
                    outcome = classify_error(err)
                    if outcome is Outcome.LOCAL or n >= policy.attempts:
                        raise
                    safe = outcome is Outcome.CONNECT_FAILURE or (
                        idempotent and request.body.replayable
                    )
                    if not safe or outcome not in self._on_outcome:
                        raise
                    reason = outcome.value
                    last: SidecarError | Response = err
                else:
                    if (
                        n >= policy.attempts
                        or not self._retry_status(response.status)
                        or not (idempotent and request.body.replayable)
                    ):
                        return response
                    reason = str(response.status)
                    last = response
                delay = self._backoff(n + 1)
                if request.deadline is not None and clock.monotonic() + delay >= request.deadline:
                    return _give_up(last)
                if not budget.try_withdraw():
                    observer.retry_budget_exhausted(request.upstream)
                    return _give_up(last)
                if isinstance(last, Response):
                    _abort(last)
                n += 1
                observer.retry(request.upstream, reason)
                request.retry_reason = reason
                await self._sleep(delay)
                request.attempt = n + 1
                request.headers.set("x-sidecar-attempt", str(n + 1))

        return retry


def _give_up(last: SidecarError | Response) -> Response:
    if isinstance(last, Response):
        return last
    raise last
