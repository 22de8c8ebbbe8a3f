from __future__ import annotations

from sidecar.http import EMPTY_BODY, Headers, Request
from sidecar.proxy.prepare import RequestPreparer, forwarded_element


def _request(client: str, *fields: tuple[str, str]) -> Request:
    return Request("GET", "/", Headers(fields), EMPTY_BODY, client_addr=client)


def test_trust_is_by_cidr_including_ipv4_mapped_addresses() -> None:
    p = RequestPreparer(["10.0.0.0/8", "fd00::/8"])
    assert p.trusts("10.1.2.3")
    assert p.trusts("::ffff:10.1.2.3")
    assert p.trusts("fd00::1")
    assert not p.trusts("11.0.0.1")
    assert not p.trusts("not an address")
    assert not p.trusts("")
    assert not RequestPreparer().trusts("10.1.2.3")


def test_reload_changes_the_verdicts() -> None:
    p = RequestPreparer(["10.0.0.0/8"])
    assert p.trusts("10.0.0.1")
    p.trust([])
    assert not p.trusts("10.0.0.1")


def test_forwarded_element_quotes_what_is_not_a_token() -> None:
    assert forwarded_element("::1", "http", "svc:8080") == 'for="[::1]";host="svc:8080";proto=http'
    assert forwarded_element("", "http", None) == "proto=http"


def test_untrusted_forwarding_headers_are_replaced() -> None:
    req = _request(
        "1.2.3.4",
        ("host", "svc"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil"),
        ("forwarded", "for=9.9.9.9"),
        ("x-forwarded-for", "9.9.9.9"),
    )
    RequestPreparer(["10.0.0.0/8"])(req)
    h = req.headers
    assert h.get_all("x-forwarded-proto") == ["http"]
    assert h.get_all("x-forwarded-host") == ["svc"]
    assert h.get_all("forwarded") == ["for=1.2.3.4;host=svc;proto=http"]
    assert h.get_all("x-forwarded-for") == ["9.9.9.9, 1.2.3.4"]


def test_no_forwarded_header_is_invented() -> None:
    req = _request("1.2.3.4", ("host", "svc"))
    RequestPreparer()(req)
    assert "forwarded" not in req.headers
