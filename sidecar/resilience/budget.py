"""Retry budget (Linkerd / Envoy style): retries may add at most `ratio` of the recent request
volume, plus a floor of `min_per_s` so low traffic can still retry. Counted over a sliding
window of one-second buckets, so the cost is O(1) and the memory fixed."""

from __future__ import annotations

from sidecar.clock import Clock


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float, clock: Clock, window: int = 10) -> None:
        self._ratio = ratio
        self._min = min_per_s * window
        self._clock = clock
        self._window = window
        self._requests = [0] * window
        self._retries = [0] * window
        self._stamp = [-1] * window

    def _bucket(self) -> int:
        second = int(self._clock.monotonic())
        i = second % self._window
        if self._stamp[i] != second:
            self._stamp[i] = second
            self._requests[i] = 0
            self._retries[i] = 0
        return i

    def _sum(self, counts: list[int]) -> int:
        oldest = int(self._clock.monotonic()) - self._window
        return sum(c for c, s in zip(counts, self._stamp, strict=True) if s > oldest)

    def record_request(self) -> None:
        self._requests[self._bucket()] += 1

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget allows it."""
        i = self._bucket()
        allowed = self._min + self._ratio * self._sum(self._requests)
        if self._sum(self._retries) + 1 > allowed:
            return False
        self._retries[i] += 1
        return True
