"""Small numeric helpers shared by the analysis modules."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 when empty): always a value that
    was observed, so "p99 = 412 ms" names a real request."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[int]) -> int:
    return percentile(sorted(values), 0.5)


def ms(us: float) -> float:
    """µs → ms, rounded for reports."""
    return round(us / 1000.0, 3)
