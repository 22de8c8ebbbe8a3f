"""Malformed responses from an upstream: 502 upstream_reset before headers, a cut stream after,
and the upstream connection is never reused (the next request opens a new one)."""

from __future__ import annotations

import pytest

from tests.doubles.raw_upstream import Reply
from tests.integration.hardening.conftest import UPSTREAM, assert_error, eventually, exchange

GET = f"GET /r HTTP/1.1\r\nHost: {UPSTREAM}\r\n\r\n".encode()
GET_CLOSE = f"GET /next HTTP/1.1\r\nHost: {UPSTREAM}\r\nConnection: close\r\n\r\n".encode()

# (id, reply, close after writing it)
BEFORE_HEADERS: list[tuple[str, bytes, bool]] = [
    ("bad_status_code", b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n", False),
    ("not_http", b"garbage\r\n\r\n", False),
    ("http_0_9_body", b"<html>hello</html>", False),
    ("status_99", b"HTTP/1.1 99 X\r\ncontent-length: 0\r\n\r\n", False),
    ("status_1000", b"HTTP/1.1 1000 X\r\ncontent-length: 0\r\n\r\n", False),
    ("http_2_0_text", b"HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n", False),
    (
        "conflicting_cl",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nabcde",
        False,
    ),
    (
        "duplicate_cl",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nabcde",
        False,
    ),
    (
        "cl_and_te",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        False,
    ),
    ("negative_cl", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", False),
    ("nul_in_header", b"HTTP/1.1 200 OK\r\nx-a: a\x00\r\ncontent-length: 0\r\n\r\n", False),
    ("obs_fold", b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 0\r\n\r\n", False),
    ("bare_lf", b"HTTP/1.1 200 OK\ncontent-length: 0\n\n", False),
    ("huge_header", b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 70_000 + b"\r\n\r\n", False),
    ("endless_headers", b"HTTP/1.1 200 OK\r\n" + b"x-a: 0123456789abcdef\r\n" * 4000, False),
    ("close_mid_status_line", b"HTTP/1.1 2", True),
    ("close_mid_headers", b"HTTP/1.1 200 OK\r\ncontent-le", True),
    ("close_without_reply", b"", True),
]

AFTER_HEADERS: list[tuple[str, bytes, bool]] = [
    ("truncated_cl_body", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", True),
    (
        "truncated_chunked_body",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        True,
    ),
    (
        "bad_chunk_size",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\nzz\r\n",
        False,
    ),
    ("chunk_overrun", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXX", False),
]


async def _next_request_uses_a_new_connection(up, port):
    ex = await exchange(port, GET_CLOSE)
    assert [r.status for r in ex.responses] == [200]
    assert up.seen[-1].target == "/next"
    assert up.seen[-1].conn != up.seen[0].conn, "a broken upstream connection was reused"


@pytest.mark.parametrize(
    ("reply", "close"), [c[1:] for c in BEFORE_HEADERS], ids=[c[0] for c in BEFORE_HEADERS]
)
async def test_malformed_response_before_headers_is_502_and_connection_discarded(
    guarded, reply, close
):
    up, sc, port = await guarded()
    up.script.append(Reply(reply, close=close))
    ex = await exchange(port, GET, until=1)
    assert len(ex.responses) == 1, ex.raw
    body = assert_error(ex.responses[0], 502, "upstream_reset")
    assert body["upstream"] == UPSTREAM
    await _next_request_uses_a_new_connection(up, port)
    # the broken connection is closed by the sidecar; only the good, pooled one stays open
    await eventually(lambda: up.open_connections == 1 and sc.client.open_connections() == 1)


@pytest.mark.parametrize(
    ("reply", "close"), [c[1:] for c in AFTER_HEADERS], ids=[c[0] for c in AFTER_HEADERS]
)
async def test_malformed_body_after_headers_cuts_the_stream(guarded, reply, close):
    up, sc, port = await guarded()
    up.script.append(Reply(reply, close=close))
    ex = await exchange(port, GET, timeout=5)
    assert ex.eof, "the client must see the stream end, not hang"
    assert len(ex.responses) == 1
    resp = ex.responses[0]
    assert resp.status == 200 and not resp.complete, "a cut body must not look complete"
    await _next_request_uses_a_new_connection(up, port)
