"""Hostile and malformed requests over raw sockets: each gets a 4xx from the sidecar itself
and nothing reaches the upstream. The upstream is a strict raw double, so "nothing" means not
even a TCP connection for head-level faults, and never a complete request for body-level ones
(the sidecar streams bodies, so a request head may already be on its way when a chunk breaks;
the upstream then sees that connection cut before the request completes)."""

from __future__ import annotations

import pytest

from tests.integration.hardening.conftest import UPSTREAM, assert_error, exchange

H = f"Host: {UPSTREAM}\r\n".encode()
BAD, TOO_LARGE, NO_ROUTE = (400, "bad_request"), (431, "bad_request"), (404, "no_route")


def req(head: bytes, body: bytes = b"", method: bytes = b"POST") -> bytes:
    return method + b" / HTTP/1.1\r\n" + head + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"
SMUGGLED = b"GET /admin HTTP/1.1\r\n" + H + b"\r\n"

# (id, bytes, (status, code), body_level) — body_level: the head is valid, the body breaks.
CASES: list[tuple[str, bytes, tuple[int, str], bool]] = [
    # --- framing: Content-Length / Transfer-Encoding disagreements (request smuggling)
    ("cl_and_te", req(H + b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\n"), BAD, False),
    ("te_and_cl", req(H + CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\n"), BAD, False),
    (
        "cl_te_smuggle",
        req(H + b"Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\n" + SMUGGLED),
        BAD,
        False,
    ),
    (
        "te_cl_smuggle",
        req(H + b"Content-Length: 4\r\n" + CHUNKED, b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"),
        BAD,
        False,
    ),
    (
        "cl_duplicate_same",
        req(H + b"Content-Length: 4\r\nContent-Length: 4\r\n", b"abcd"),
        BAD,
        False,
    ),
    (
        "cl_conflicting",
        req(H + b"Content-Length: 4\r\nContent-Length: 5\r\n", b"abcde"),
        BAD,
        False,
    ),
    ("cl_list", req(H + b"Content-Length: 4, 4\r\n", b"abcd"), BAD, False),
    ("cl_plus_sign", req(H + b"Content-Length: +4\r\n", b"abcd"), BAD, False),
    ("cl_negative", req(H + b"Content-Length: -1\r\n", b"abcd"), BAD, False),
    ("cl_hex", req(H + b"Content-Length: 0x4\r\n", b"abcd"), BAD, False),
    ("cl_inner_space", req(H + b"Content-Length: 4 4\r\n", b"abcd"), BAD, False),
    ("cl_empty", req(H + b"Content-Length: \r\n", b"abcd"), BAD, False),
    ("cl_overflow", req(H + b"Content-Length: 99999999999999999999999\r\n"), BAD, False),
    ("cl_u64_max", req(H + b"Content-Length: 18446744073709551615\r\n"), BAD, False),
    ("te_chunked_identity", req(H + b"Transfer-Encoding: chunked, identity\r\n"), BAD, False),
    (
        "te_identity_chunked",
        req(H + b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
        BAD,
        False,
    ),
    ("te_xchunked", req(H + b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), BAD, False),
    ("te_gzip", req(H + b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"), BAD, False),
    ("te_twice", req(H + CHUNKED + CHUNKED, b"0\r\n\r\n"), BAD, False),
    ("te_empty", req(H + b"Transfer-Encoding: \r\n", b"0\r\n\r\n"), BAD, False),
    ("te_in_http10", b"POST / HTTP/1.0\r\n" + H + CHUNKED + b"\r\n0\r\n\r\n", BAD, False),
    ("te_space_before_colon", req(H + b"Transfer-Encoding : chunked\r\n"), BAD, False),
    (
        "te_leading_space_line",
        b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + H + b"\r\n",
        BAD,
        False,
    ),
    (
        "te_tab_value_with_cl",
        req(H + b"Content-Length: 3\r\nTransfer-Encoding:\tchunked\r\n"),
        BAD,
        False,
    ),
    (
        "te_space_value_with_cl",
        req(H + b"Content-Length: 3\r\nTransfer-Encoding:  chunked\r\n"),
        BAD,
        False,
    ),
    (
        "te_upper_name_with_cl",
        req(H + b"Content-Length: 3\r\nTRANSFER-ENCODING: chunked\r\n"),
        BAD,
        False,
    ),
    ("te_vertical_tab", req(H + b"Transfer-Encoding: chunked\x0b\r\n"), BAD, False),
    ("te_obs_fold", req(H + b"Transfer-Encoding:\r\n chunked\r\n"), BAD, False),
    # --- chunk sizes and extensions (head is fine; the body breaks)
    ("chunk_size_garbage", req(H + CHUNKED, b"zz\r\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_size_overflow", req(H + CHUNKED, b"fffffffffffffffffff\r\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_size_negative", req(H + CHUNKED, b"-2\r\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_size_space_ext", req(H + CHUNKED, b"2 ;a=b\r\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_ext_nul", req(H + CHUNKED, b"2;a\x00b\r\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_ext_open_quote", req(H + CHUNKED, b'2;a="b\r\nab\r\n0\r\n\r\n'), BAD, True),
    ("chunk_size_bare_lf", req(H + CHUNKED, b"2\nab\r\n0\r\n\r\n"), BAD, True),
    ("chunk_data_overrun", req(H + CHUNKED, b"2\r\nabXX0\r\n\r\n"), BAD, True),
    (
        "chunk_after_data_ok",
        req(H + CHUNKED, b"5\r\nhello\r\n" + b"q\r\n"),  # a good chunk, then garbage
        BAD,
        True,
    ),
    # --- header field syntax
    ("nul_in_value", req(H + b"X-A: a\x00b\r\n", method=b"GET"), BAD, False),
    ("cr_in_value", req(H + b"X-A: a\rb\r\n", method=b"GET"), BAD, False),
    ("lf_in_value", req(H + b"X-A: a\nX-Injected: b\r\n", method=b"GET"), BAD, False),
    ("del_in_value", req(H + b"X-A: \x7f\r\n", method=b"GET"), BAD, False),
    ("nul_in_name", req(H + b"X\x00A: b\r\n", method=b"GET"), BAD, False),
    ("space_in_name", req(H + b"X A: b\r\n", method=b"GET"), BAD, False),
    ("colon_less_line", req(H + b"X-A\r\n", method=b"GET"), BAD, False),
    ("ws_before_colon", b"GET / HTTP/1.1\r\nHost : " + UPSTREAM.encode() + b"\r\n\r\n", BAD, False),
    ("obs_fold_space", req(H + b"X-A: a\r\n b\r\n", method=b"GET"), BAD, False),
    ("obs_fold_tab", req(H + b"X-A: a\r\n\tb\r\n", method=b"GET"), BAD, False),
    ("bare_lf_lines", b"GET / HTTP/1.1\nHost: " + UPSTREAM.encode() + b"\n\n", BAD, False),
    ("missing_host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", BAD, False),
    ("duplicate_host", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", BAD, False),
    ("conflicting_host", b"GET / HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", BAD, False),
    # --- versions
    ("http_1_2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", BAD, False),
    ("http_2_0_text", b"GET / HTTP/2.0\r\n" + H + b"\r\n", BAD, False),
    ("http_3_0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", BAD, False),
    ("http_0_9", b"GET /\r\n\r\n", BAD, False),
    ("http_lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", BAD, False),
    ("http_11_1", b"GET / HTTP/11.1\r\n" + H + b"\r\n", BAD, False),
    # (the HTTP/2 preface is served as HTTP/2 now: tests/integration/protocols/test_h2_attacks.py)
    # --- request-line garbage
    ("tls_client_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), BAD, False),
    ("lowercase_method", b"get / HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    ("nul_in_target", b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    ("tab_in_target", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    ("high_byte_in_target", b"GET /\xff HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    ("https_absolute_uri", b"GET https://user-service/ HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    ("ftp_absolute_uri", b"GET ftp://user-service/ HTTP/1.1\r\n" + H + b"\r\n", BAD, False),
    # --- sizes
    (
        "long_request_line",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + H + b"\r\n",
        TOO_LARGE,
        False,
    ),
    (
        "big_headers",
        req(H + b"".join(b"X-%d: %b\r\n" % (i, b"v" * 1000) for i in range(20))),
        TOO_LARGE,
        False,
    ),
    (
        "endless_header_value",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 40000,
        TOO_LARGE,
        False,
    ),
    (
        "too_many_headers",
        req(H + b"".join(b"X-%d: v\r\n" % i for i in range(150))),
        TOO_LARGE,
        False,
    ),
    # --- where the request wants to go
    (
        "abs_metadata_ip",
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    (
        "abs_metadata_name",
        b"GET http://metadata.google.internal/ HTTP/1.1\r\nHost: metadata.google.internal\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    ("abs_ipv6_loopback", b"GET http://[::1]/ HTTP/1.1\r\nHost: [::1]\r\n\r\n", NO_ROUTE, False),
    (
        "abs_ipv4_mapped_v6",
        b"GET http://[::ffff:127.0.0.1]/ HTTP/1.1\r\nHost: x\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    (
        "abs_decimal_ip",
        b"GET http://2130706433/ HTTP/1.1\r\nHost: 2130706433\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    ("abs_hex_ip", b"GET http://0x7f.1/ HTTP/1.1\r\nHost: 0x7f.1\r\n\r\n", NO_ROUTE, False),
    (
        "abs_octal_ip",
        b"GET http://0177.0.0.1/ HTTP/1.1\r\nHost: 0177.0.0.1\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    ("abs_short_ip", b"GET http://127.1/ HTTP/1.1\r\nHost: 127.1\r\n\r\n", NO_ROUTE, False),
    (
        "abs_localhost",
        b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    ("host_decimal_ip", b"GET / HTTP/1.1\r\nHost: 2130706433\r\n\r\n", NO_ROUTE, False),
    (
        "host_ip_via_consul_suffix",
        b"GET / HTTP/1.1\r\nHost: 2130706433.service.consul\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    ("host_localhost", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", NO_ROUTE, False),
    ("host_localhost_shouting_dot", b"GET / HTTP/1.1\r\nHost: LOCALHOST.\r\n\r\n", NO_ROUTE, False),
    ("host_sub_localhost", b"GET / HTTP/1.1\r\nHost: api.localhost\r\n\r\n", NO_ROUTE, False),
    ("host_unknown", b"GET / HTTP/1.1\r\nHost: not-configured\r\n\r\n", NO_ROUTE, False),
    (
        "host_userinfo",
        b"GET / HTTP/1.1\r\nHost: user-service@evil.example\r\n\r\n",
        NO_ROUTE,
        False,
    ),
    (
        "abs_unknown",
        b"GET http://evil.example/ HTTP/1.1\r\nHost: user-service\r\n\r\n",
        NO_ROUTE,
        False,
    ),
]


def _upstream_port_cases() -> list[tuple[str, str, tuple[int, str]]]:
    # Targets that name the upstream double's own address: forwarded, they'd reach it.
    return [
        (
            "abs_loopback_ip",
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: user-service\r\n\r\n",
            NO_ROUTE,
        ),
        ("host_loopback_ip", "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", NO_ROUTE),
        (
            "abs_decimal_ip_port",
            "GET http://2130706433:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
            NO_ROUTE,
        ),
        (
            "connect_loopback",
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
            (405, "bad_request"),
        ),
        (
            "connect_upstream_name",
            "CONNECT user-service:80 HTTP/1.1\r\nHost: user-service:80\r\n\r\n",
            (405, "bad_request"),
        ),
    ]


@pytest.mark.parametrize(
    ("data", "expected", "body_level"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_hostile_request_is_refused_and_never_forwarded(guarded, data, expected, body_level):
    up, sc, port = await guarded()
    routing_level = expected[0] == 404 or b"://" in data[:20]
    ex = await exchange(port, data, until=1 if routing_level else None)
    assert len(ex.responses) == 1, ex.raw
    body = assert_error(ex.responses[0], *expected)
    assert body["message"]
    if not routing_level:
        assert ex.eof, "after a parse error the connection is closed: its framing is unknown"
    assert up.seen == [] and up.violations == []
    if not body_level:
        assert up.connections == 0
    # ...and the listener still serves a good request afterwards
    ok = await exchange(port, b"GET /after HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert [r.status for r in ok.responses] == [200]
    assert [s.target for s in up.seen] == ["/after"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [c[1:] for c in _upstream_port_cases()],
    ids=[c[0] for c in _upstream_port_cases()],
)
async def test_requests_aimed_at_addresses_are_refused(guarded, template, expected):
    up, sc, port = await guarded()
    ex = await exchange(port, template.format(port=up.port).encode(), until=1)
    assert_error(ex.responses[0], *expected)
    assert up.connections == 0


# --------------------------------------------------------------------- pipelining and smuggling


async def test_request_hidden_in_a_content_length_body_stays_a_body(guarded):
    up, sc, port = await guarded()
    data = (
        b"POST /outer HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
        % (
            len(SMUGGLED),
            SMUGGLED,
        )
    )
    ex = await exchange(port, data)
    assert [r.status for r in ex.responses] == [200]
    assert [(s.target, s.body) for s in up.seen] == [("/outer", SMUGGLED)]
    assert up.violations == []


async def test_request_hidden_in_a_chunked_body_stays_a_body(guarded):
    up, sc, port = await guarded()
    data = b"POST /outer HTTP/1.1\r\n" + H + CHUNKED + b"Connection: close\r\n\r\n"
    data += b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    ex = await exchange(port, data)
    assert [r.status for r in ex.responses] == [200]
    assert [(s.target, s.body) for s in up.seen] == [("/outer", SMUGGLED)]


async def test_get_with_a_body_holding_a_request_sends_one_request(guarded):
    up, sc, port = await guarded()
    data = (
        b"GET /outer HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
        % (
            len(SMUGGLED),
            SMUGGLED,
        )
    )
    ex = await exchange(port, data)
    assert [r.status for r in ex.responses] == [200]
    assert [s.target for s in up.seen] == ["/outer"]


async def test_good_request_then_smuggling_attempt_on_the_same_connection(guarded):
    up, sc, port = await guarded()
    first = b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
    second = req(H + b"Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\n" + SMUGGLED)
    ex = await exchange(port, first + second)
    assert [r.status for r in ex.responses] == [200, 400]
    assert [s.target for s in up.seen] == ["/first"]
    assert ex.eof


async def test_garbage_after_a_complete_request_is_refused_not_forwarded(guarded):
    up, sc, port = await guarded()
    first = b"GET /first HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n"
    ex = await exchange(port, first + b"GARBAGE / HTTP/1.1\r\n" + H + b"\r\n")
    assert [r.status for r in ex.responses] == [200, 400]
    assert [s.target for s in up.seen] == ["/first"]


async def test_well_formed_pipeline_is_answered_in_order(guarded):
    up, sc, port = await guarded()
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(5))
    ex = await exchange(port, reqs + b"GET /last HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert [r.status for r in ex.responses] == [200] * 6
    assert [r.json()["path"] for r in ex.responses] == [f"/p{i}" for i in range(5)] + ["/last"]
    assert [s.target for s in up.seen] == [f"/p{i}" for i in range(5)] + ["/last"]
    assert up.violations == []


async def test_refused_upgrade_is_answered_then_closed(guarded):
    # llhttp stops parsing after an Upgrade; the upstream is asked to switch, declines (200),
    # and the sidecar answers in HTTP/1.1 and closes: bytes after it are never parsed.
    up, sc, port = await guarded()
    data = b"GET /ws HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    ex = await exchange(port, data + SMUGGLED)
    assert [r.status for r in ex.responses] == [200]
    assert ex.eof
    assert [s.target for s in up.seen] == ["/ws"]
    assert up.seen[0].header("upgrade") == "websocket"
