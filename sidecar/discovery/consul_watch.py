"""The blocking-query loop of one Consul watch, with the index rules of Consul's docs.

- a return is not a change: the caller compares results;
- the index going backwards resets it to 0; an index < 1 is never sent as blocking;
- a token bucket bounds the request rate so errors or index churn cannot spin;
- errors back off exponentially (with jitter) and are reported, never raised."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.clock import Clock, SystemClock
from sidecar.discovery.consul_http import ConsulError, ConsulHttp, ConsulReply, format_wait

log = logging.getLogger(__name__)


class TokenBucket:
    """`rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Clock | None = None) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock or SystemClock()
        self._last = self._clock.monotonic()

    def delay(self) -> float:
        """Take a token; seconds to wait before using it (0 when one was available)."""
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog), reset on success."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self._cap, self._base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


OnReply = Callable[[ConsulReply], None]
OnError = Callable[[ConsulError], Awaitable[float]]


class BlockingQuery:
    """GET `path` as a blocking query forever, handing every successful reply to `on_reply`
    and every failure to `on_error` (which returns how long to wait before retrying)."""

    def __init__(
        self,
        http: ConsulHttp,
        path: str,
        params: dict[str, str],
        *,
        wait: float,
        bucket: TokenBucket,
    ) -> None:
        self._http = http
        self._path = path
        self._params = params
        self._wait = wait
        self._bucket = bucket
        self.index = 0

    def next_params(self) -> dict[str, str]:
        params = dict(self._params)
        if self._http.datacenter:
            params["dc"] = self._http.datacenter
        if self.index >= 1:
            params["index"] = str(self.index)
            params["wait"] = format_wait(self._wait)
        return params

    def advance(self, reply_index: int) -> None:
        if reply_index < self.index or reply_index < 1:
            log.info(
                "consul index for %s went backwards (%d → %d): resetting",
                self._path,
                self.index,
                reply_index,
            )
            self.index = 0
        else:
            self.index = reply_index

    async def run(self, on_reply: OnReply, on_error: OnError) -> None:
        # Consul adds up to wait/16 jitter; leave room for it plus a slow network.
        timeout = self._wait * 17 / 16 + 5.0
        while True:
            await self._bucket.acquire()
            try:
                reply = await self._http.get(self._path, self.next_params(), deadline=timeout)
            except ConsulError as exc:
                delay = await on_error(exc)
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            self.advance(reply.index)
            on_reply(reply)


def as_list(body: Any) -> list[Any]:
    return body if isinstance(body, list) else []
