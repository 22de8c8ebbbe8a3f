from __future__ import annotations

import random

from sidecar.discovery.consul_http import format_wait
from sidecar.discovery.consul_watch import Backoff, TokenBucket
from tests.unit.discovery.fakes import FakeClock


def test_token_bucket_allows_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.delay() == 0.5
    assert bucket.delay() == 1.0  # debt accumulates: a spinning caller is slowed down
    clock.advance(10)
    assert bucket.delay() == 0.0


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(0.1, 1.0, random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[5:])
    b.reset()
    assert b.next() <= 0.1


def test_format_wait() -> None:
    assert format_wait(55) == "55s"
    assert format_wait(0.25) == "250ms"
