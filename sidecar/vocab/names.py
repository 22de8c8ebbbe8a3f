"""The names a config may choose from, where the config schema, the factories that build
them and the docs must agree. The `Literal` types are what the config schema validates; the
tuples are the same names in order, for messages and loops."""

from __future__ import annotations

from typing import Final, Literal, get_args

BalancerName = Literal["round_robin", "random", "least_request", "ewma"]
BALANCERS: Final[tuple[str, ...]] = get_args(BalancerName)

SamplerName = Literal[
    "parentbased_traceidratio",
    "traceidratio",
    "always_on",
    "always_off",
    "parentbased_always_on",
    "parentbased_always_off",
]
SAMPLERS: Final[tuple[str, ...]] = get_args(SamplerName)

PropagatorName = Literal["tracecontext", "baggage", "b3", "b3multi", "jaeger"]
PROPAGATORS: Final[tuple[str, ...]] = get_args(PropagatorName)
