"""The `/admin/endpoints` view of one cluster: per endpoint, what the balancer, outlier
detection and active health checks think of it."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sidecar.balance.cluster import Cluster, EndpointState, PassiveState
from sidecar.balance.penalty import failure_score


@runtime_checkable
class CostModel(Protocol):
    def cost(self, state: EndpointState, now: float) -> float: ...


def passive_state(state: EndpointState, now: float) -> PassiveState:
    """The passive state as of `now` (an ejection that ran out reads as probation)."""
    if state.passive is PassiveState.EJECTED and not state.is_ejected(now):
        return PassiveState.PROBATION
    return state.passive


def endpoint_snapshot(state: EndpointState, balancer: object, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": state.endpoint.address,
        "available": state.is_available(now),
        "active": state.active.value,
        "passive": passive_state(state, now).value,
        "ejected": state.is_ejected(now),
        "ejected_for_s": round(max(0.0, state.ejected_until - now), 3),
        "times_ejected": state.times_ejected,
        "consecutive_failures": state.consecutive_failures,
        "inflight": state.inflight,
        "ewma_ms": round(state.ewma_rtt * 1000, 3),
        "failure_penalty": round(failure_score(state, now), 3),
        "last_failure": (
            {"kind": state.last_failure, "seconds_ago": round(now - state.last_failure_at, 3)}
            if state.last_failure
            else None
        ),
    }
    if isinstance(balancer, CostModel):
        out["cost"] = round(balancer.cost(state, now), 6)
    return out


def endpoints_snapshot(cluster: Cluster, balancer: object, now: float) -> list[dict[str, Any]]:
    return [endpoint_snapshot(s, balancer, now) for s in cluster.states]
