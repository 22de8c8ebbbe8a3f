"""Rate limit for state-change log lines (ejections, health transitions, breaker trips).

Those lines are written once per transition, never per request, but a flapping endpoint can
still transition often; a token bucket (time passed in by the caller, from its injected clock)
caps the lines, and the next line let through says how many were held back."""

from __future__ import annotations

import logging
import math


class LogLimiter:
    __slots__ = ("_burst", "_period", "_stamp", "_suppressed", "_tokens")

    def __init__(self, burst: int = 10, period: float = 6.0) -> None:
        self._burst = float(burst)
        self._period = period
        self._tokens = float(burst)
        self._stamp = -math.inf
        self._suppressed = 0

    def info(self, logger: logging.Logger, now: float, msg: str, *args: object) -> bool:
        """Log `msg` at info if the budget allows at `now`; True if it was written."""
        if not logger.isEnabledFor(logging.INFO):
            return False
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) / self._period)
        self._stamp = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return False
        self._tokens -= 1.0
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        logger.info(msg, *args)
        return True
