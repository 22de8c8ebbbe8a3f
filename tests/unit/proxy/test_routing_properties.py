"""Property tests for outbound routing: a literal address or localhost is never routable,
however it is spelled, even if every name were configured."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.discovery.resolver import Directory
from sidecar.errors import BadRequest, NoRoute
from sidecar.http import BytesBody, Headers, Request, Response
from sidecar.proxy.routing import OutboundRouter, is_address_like


async def _never(request: Request) -> Response:  # pragma: no cover - never reached
    raise AssertionError(request.target)


# The worst case: a router that would route *any* name.
ROUTER = OutboundRouter(Directory([]), lambda name: _never, lambda name: True)


def _v4_spellings(addr: int) -> st.SearchStrategy[str]:
    """The ways inet_aton(3) reads an IPv4 address: 1-4 parts, decimal/octal/hex each."""
    octets = list(addr.to_bytes(4, "big"))

    def spell(n: int, style: str) -> str:
        return {"d": str(n), "o": "0" + oct(n)[2:], "x": hex(n), "X": "0X" + format(n, "X")}[style]

    forms = [
        (octets, 4),
        ([octets[0], octets[1], (octets[2] << 8) | octets[3]], 3),
        ([octets[0], (octets[1] << 16) | (octets[2] << 8) | octets[3]], 2),
        ([addr], 1),
    ]
    return st.sampled_from(forms).flatmap(
        lambda f: st.lists(st.sampled_from("doxX"), min_size=f[1], max_size=f[1]).map(
            lambda styles: ".".join(spell(n, s) for n, s in zip(f[0], styles, strict=True))
        )
    )


V4 = st.integers(0, 2**32 - 1).flatmap(_v4_spellings)
V6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
V4_MAPPED = st.ip_addresses(v=4).map(lambda a: f"[::ffff:{a}]")
LOCAL = st.tuples(
    st.sampled_from(["", "api.", "a.b."]),
    st.sampled_from(["localhost", "LOCALHOST", "LocalHost"]),
    st.sampled_from(["", "."]),
).map("".join)
HOSTS = st.one_of(V4, V6, V4_MAPPED, LOCAL, V4.map(lambda h: h + ".service.consul"))
PORTS = st.one_of(st.just(""), st.integers(0, 65535).map(lambda p: f":{p}"))


def _request(target: str, host: str) -> Request:
    return Request(method="GET", target=target, headers=Headers([("host", host)]), body=BytesBody())


@given(HOSTS, PORTS, st.booleans())
def test_addresses_and_localhost_are_never_routable(host, port, absolute):
    authority = host + port
    if absolute:
        req = _request(f"http://{authority}/x", "user-service")
    else:
        req = _request("/x", authority)
    with pytest.raises((NoRoute, BadRequest)):
        ROUTER.upstream_name(req)


@given(st.ip_addresses())
def test_every_ip_address_is_address_like(addr):
    assert is_address_like(str(addr))
    if isinstance(addr, ipaddress.IPv4Address):
        assert is_address_like(str(int(addr)))


NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z]\Z").filter(lambda n: "localhost" not in n)


@given(NAMES)
def test_service_names_route(name):
    assert ROUTER.upstream_name(_request("/x", name)) == name
    assert ROUTER.upstream_name(_request("/x", f"{name}.service.consul:8080")) == name


@given(NAMES, st.sampled_from(["", ":", ":80", ":65535"]))
def test_a_valid_port_routes_and_an_empty_one_is_dropped(name, port):
    req = _request("/x", name + port)
    assert ROUTER.upstream_name(req) == name
    # What the upstream is sent: an empty port means the default one (RFC 3986 §6.2.3).
    expected = name if port == ":" else name + port
    assert req.authority == expected and req.headers.get("host") == expected


BAD_PORTS = st.one_of(
    st.sampled_from(
        # The last one is full-width digits, which str.isdigit() accepts.
        [
            ":,",
            "::",
            ":80:",
            ":8o",
            ": 80",
            ":80 ",
            ":+80",
            ":-1",
            ":65536",
            ":123456",
            ":\uff18\uff10",
        ]
    ),
    st.text(min_size=1, max_size=6).filter(lambda p: not p.isdigit()).map(lambda p: ":" + p),
)


@given(NAMES, BAD_PORTS)
def test_a_host_whose_port_is_not_a_number_is_a_bad_request(name, port):
    # RFC 9112 §3.2: 400 for an invalid Host. Forwarding it would let the upstream read a
    # different authority from the one we routed on.
    with pytest.raises(BadRequest, match="malformed Host"):
        ROUTER.upstream_name(_request("/x", name + port))
