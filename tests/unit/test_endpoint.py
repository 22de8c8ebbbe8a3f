"""Endpoint identity: its hash is computed once at construction, so it must stay the hash
of the fields equality compares (meta is neither)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

from sidecar.vocab.endpoint import Endpoint


def test_equal_endpoints_are_one_key_whatever_their_meta() -> None:
    a = Endpoint("10.0.0.1", 80, meta={"zone": "a"})
    b = Endpoint("10.0.0.1", 80, meta={"zone": "b"})
    assert a == b and hash(a) == hash(b)
    assert {(("api", a)): 1}[("api", b)] == 1


def test_each_compared_field_changes_the_key() -> None:
    base = Endpoint("10.0.0.1", 80)
    others = [
        Endpoint("10.0.0.2", 80),
        Endpoint("10.0.0.1", 81),
        Endpoint("10.0.0.1", 80, weight=2),
        Endpoint("10.0.0.1", 80, tags=("canary",)),
        Endpoint("10.0.0.1", 80, tls=True),
    ]
    pools = {base: "base"} | {e: str(i) for i, e in enumerate(others)}
    assert len(pools) == 6


def test_copies_keep_a_consistent_hash() -> None:
    a = Endpoint("h", 1, tags=("x",))
    for b in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a), dataclasses.replace(a)):
        assert b == a and hash(b) == hash(a)
    moved = dataclasses.replace(a, port=2)
    assert hash(moved) == hash(Endpoint("h", 2, tags=("x",)))
    assert repr(a) == "Endpoint(host='h', port=1, weight=1, tags=('x',), meta={}, tls=False)"
