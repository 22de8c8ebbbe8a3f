"""TLS origination settings: the server name each endpoint is verified against, and the
endpoint address forms that turn TLS on."""

from __future__ import annotations

import ssl

import pytest

from sidecar.config import TlsConfig
from sidecar.transport.tls import build_tls, default_tls
from sidecar.vocab.endpoint import Endpoint, parse_endpoint_address


def test_server_name_is_configured_else_endpoint_name_else_upstream() -> None:
    fixed = build_tls(TlsConfig(sni="api.internal"))
    assert fixed is not None
    assert fixed.server_hostname(Endpoint("10.0.0.1", 443), "users") == "api.internal"
    tls = default_tls()
    assert tls.server_hostname(Endpoint("api.example.com", 443), "users") == "api.example.com"
    assert tls.server_hostname(Endpoint("10.0.0.1", 443), "users") == "users"
    unverified = build_tls(TlsConfig(verify=False))
    assert unverified is not None
    assert unverified.server_hostname(Endpoint("10.0.0.1", 443), "users") is None


def test_disabled_tls_builds_nothing() -> None:
    assert build_tls(None) is None
    assert build_tls(TlsConfig(enabled=False)) is None


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:8001", Endpoint("127.0.0.1", 8001)),
        ("[::1]:8002", Endpoint("::1", 8002)),
        ("https://api.example.com", Endpoint("api.example.com", 443, tls=True)),
        ("HTTPS://10.0.0.1:8443/", Endpoint("10.0.0.1", 8443, tls=True)),
        ("http://a:81", Endpoint("a", 81)),
    ],
)
def test_endpoint_address_forms(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint_address(text) == endpoint


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ftp://a:1", "scheme ftp:// is not supported"),
        ("https://a:1/v1", "without a path"),
        ("https://user@a:1", "without a path, query or user"),
        ("a", "expected host:port"),
        ("a:0", "expected host:port"),
        ("[::1:80", "malformed IPv6"),
    ],
)
def test_endpoint_address_errors_say_what_is_accepted(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_endpoint_address(text)


def test_http2_contexts_are_built_once_per_alpn_list_with_the_same_policy() -> None:
    tls = build_tls(TlsConfig(verify=False, alpn=["http/1.1"]))
    assert tls is not None
    h2 = tls.offering(("h2",))
    # one context per list: set_alpn_protocols on a shared context would change the
    # protocols of every connection it makes
    assert tls.offering(("h2",)) is h2
    assert h2 is not tls.context
    assert tls.offering(("h2", "http/1.1")) not in (h2, tls.context)
    assert tls.offering(("http/1.1",)) is tls.context
    # the policy's settings carry over
    assert h2.verify_mode == ssl.CERT_NONE and not h2.check_hostname
    assert default_tls().offering(("h2",)).verify_mode == ssl.CERT_REQUIRED
