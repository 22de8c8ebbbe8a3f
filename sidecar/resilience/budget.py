"""Retry budget (Finagle / linkerd2-proxy / Envoy): retries may add at most `ratio` of the
recent request rate on top of a small floor, so a failing upstream never sees a retry storm.

Over a sliding window (default 10 s, in buckets):
    retries ≤ budget_ratio * requests + min_retries_per_s * window
Original requests deposit; each retry withdraws. Retries do not deposit: a retry cannot earn
the right to more retries."""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.resilience.window import BucketedCounter

_REQUESTS = 0
_RETRIES = 1


class RetryBudget:
    __slots__ = ("_clock", "_counter", "_ratio", "_reserve")

    def __init__(
        self,
        ratio: float,
        min_retries_per_s: float,
        clock: Clock,
        window: float = 10.0,
        buckets: int = 10,
    ) -> None:
        self._ratio = ratio
        self._reserve = min_retries_per_s * window
        self._clock = clock
        self._counter = BucketedCounter(window, buckets, slots=2)

    def deposit(self) -> None:
        """An original request (not a retry) started."""
        self._counter.add(self._clock.monotonic(), _REQUESTS)

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        now = self._clock.monotonic()
        requests = self._counter.total(now, _REQUESTS)
        retries = self._counter.total(now, _RETRIES)
        if retries + 1 > self._ratio * requests + self._reserve:
            return False
        self._counter.add(now, _RETRIES)
        return True

    def snapshot(self) -> dict[str, float]:
        now = self._clock.monotonic()
        requests = self._counter.total(now, _REQUESTS)
        retries = self._counter.total(now, _RETRIES)
        return {
            "requests": requests,
            "retries": retries,
            "available": max(0.0, self._ratio * requests + self._reserve - retries),
        }
