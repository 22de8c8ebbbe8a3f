"""The failure penalty the P2C balancers add to an endpoint's cost.

Without it an endpoint that fails fast (connection refused, an instant 503) or that has no
latency sample yet looks cheap next to a healthy but slower one, and P2C keeps sending it
traffic until outlier detection ejects it. So every failed attempt adds one to a decaying
`failure_score` (time constant `PENALTY_DECAY`), a success halves it, and the balancers turn
the score into cost: peak-EWMA adds `FAILURE_COST` seconds per unit, least-request counts
`FAILURE_LOAD` requests in flight per unit (Finagle and linkerd's balancers make failing
endpoints look busy the same way). The penalty is large on purpose: under load a healthy
endpoint's cost grows with its queue (100 ms x 20 in flight = 2 s), and a failed endpoint must
still lose that comparison, or P2C keeps feeding it a request now and then. One failure keeps
an endpoint behind an idle 100 ms one for about `PENALTY_DECAY * ln(FAILURE_COST / 0.1)` ≈ 23 s
(a success halves the score, so a recovered endpoint is back after a few requests); repeated
failures add up, and ejection takes over for endpoints that keep failing.

Pure: time is passed in. Free when nothing failed: one attribute test per attempt."""

from __future__ import annotations

import math

from sidecar.balance.cluster import EndpointState

FAILURE_COST = 10.0  # seconds of EWMA cost per unit of failure score
FAILURE_LOAD = 100.0  # requests in flight per unit of failure score (least_request)
PENALTY_DECAY = 5.0  # seconds: time constant of the score's exponential decay
_NEGLIGIBLE = 0.01  # a score below this is dropped, so healthy endpoints cost no exp()


def failure_score(state: EndpointState, now: float) -> float:
    """The decayed score at `now` (0.0 for an endpoint that has not failed lately)."""
    score = state.failure_score
    if score == 0.0:
        return 0.0
    idle = now - state.failure_stamp
    if idle <= 0.0:
        return score
    score *= math.exp(-idle / PENALTY_DECAY)
    return score if score >= _NEGLIGIBLE else 0.0


def record_failure(state: EndpointState, kind: str, now: float) -> None:
    state.failure_score = failure_score(state, now) + 1.0
    state.failure_stamp = now
    state.last_failure = kind
    state.last_failure_at = now


def record_success(state: EndpointState, now: float) -> None:
    if state.failure_score != 0.0:
        state.failure_score = failure_score(state, now) * 0.5
        state.failure_stamp = now
