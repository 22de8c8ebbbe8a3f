"""Random index sampling for the balancers: O(1) in the number of candidates, honouring
`avoid` (endpoints this request already tried) whenever an alternative exists."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from sidecar.balance.cluster import EndpointState
from sidecar.vocab.endpoint import Endpoint

_TRIES = 4


def pick_index(
    candidates: Sequence[EndpointState],
    avoid: Collection[Endpoint],
    rng: random.Random,
    exclude: int = -1,
) -> int:
    """A uniformly random index not in `avoid` and != `exclude`, when such an index exists;
    otherwise the best available (`exclude` is only returned if it is the only candidate).

    A few random draws almost always succeed (`avoid` holds at most the retry count); after
    that, a scan of `len(avoid) + 2` consecutive slots from a random start is guaranteed to
    find one if it exists, so the cost is bounded by the retry count, not the cluster size."""
    n = len(candidates)
    if n == 1:
        return 0
    for _ in range(_TRIES):
        i = rng.randrange(n)
        if i != exclude and (not avoid or candidates[i].endpoint not in avoid):
            return i
    start = rng.randrange(n)
    fallback = -1
    for k in range(min(n, len(avoid) + 2)):
        i = (start + k) % n
        if i == exclude:
            continue
        if candidates[i].endpoint not in avoid:
            return i
        if fallback < 0:
            fallback = i
    return fallback if fallback >= 0 else (exclude + 1) % n


def pick_two(
    candidates: Sequence[EndpointState], avoid: Collection[Endpoint], rng: random.Random
) -> tuple[EndpointState, EndpointState]:
    """Two distinct candidates for P2C, or the same one twice when it is the only choice:
    the only candidate at all, or the only one not in `avoid`. A tried endpoint must never be
    the second candidate next to an untried one: P2C would compare them and may prefer the one
    that just failed (a fast failure, or no sample yet, can look cheap)."""
    i = pick_index(candidates, avoid, rng)
    if len(candidates) == 1:
        return candidates[0], candidates[0]
    j = pick_index(candidates, avoid, rng, exclude=i)
    a, b = candidates[i], candidates[j]
    if avoid and b.endpoint in avoid and a.endpoint not in avoid:
        return a, a
    return a, b
