"""A sliding time window of counters in fixed buckets: O(1) per event, bounded memory.

Shared by the retry budget and the breaker's failure-ratio window. Bucket `i` covers
[i·width, (i+1)·width); the window is the current bucket plus the `buckets - 1` before it."""

from __future__ import annotations


class BucketedCounter:
    """Counts `slots` kinds of events (e.g. requests and retries) over a sliding window."""

    __slots__ = ("_buckets", "_counts", "_current", "_n", "_slots", "_totals", "_width")

    def __init__(self, window: float, buckets: int = 10, slots: int = 2) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("window must be positive and buckets at least 1")
        self._width = window / buckets
        self._n = buckets
        self._slots = slots
        self._counts = [[0] * slots for _ in range(buckets)]
        self._totals = [0] * slots
        self._current = 0  # absolute index of the newest bucket

    def _advance(self, now: float) -> None:
        idx = int(now // self._width)
        gap = idx - self._current
        if gap <= 0:
            return
        # Zero the buckets that fell out; at most `n` of them, however long we were idle.
        for k in range(1, min(gap, self._n) + 1):
            bucket = self._counts[(self._current + k) % self._n]
            for s in range(self._slots):
                self._totals[s] -= bucket[s]
                bucket[s] = 0
        self._current = idx

    def add(self, now: float, slot: int, amount: int = 1) -> None:
        self._advance(now)
        self._counts[self._current % self._n][slot] += amount
        self._totals[slot] += amount

    def total(self, now: float, slot: int) -> int:
        self._advance(now)
        return self._totals[slot]

    def reset(self) -> None:
        for bucket in self._counts:
            for s in range(self._slots):
                bucket[s] = 0
        self._totals = [0] * self._slots
