"""Protocol detection, the rapid-reset limit and the HTTP/2 body's flow control."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http import Headers
from sidecar.transport import h2conn
from sidecar.transport import h2wire as wire
from sidecar.transport.detect import H2_PREFACE, is_h2_preface
from sidecar.transport.h2_body import H2Body
from sidecar.transport.h2_common import ResetRate
from sidecar.transport.h2conn import ConnectionProtocolError, H2Conn

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]


@pytest.mark.parametrize(
    ("first", "h2"),
    [
        (H2_PREFACE + b"\x00\x00\x00\x04", True),
        (H2_PREFACE[:10], True),
        (b"PRI", True),
        (b"POST / HTTP/1.1\r\n", False),
        (b"PUT /x HTTP/1.1\r\n", False),
        (b"PRI * HTTP/1.1\r\n", False),
        (b"GET / HTTP/1.1\r\n", False),
        (b"PR", False),  # too short to tell: HTTP/1.1's parser gets it (and rejects "PRI")
    ],
)
def test_preface_detection(first: bytes, h2: bool) -> None:
    assert is_h2_preface(first) is h2


def test_reset_rate_trips_only_over_the_limit_within_the_window() -> None:
    now = [0.0]
    rate = ResetRate(limit=3, window=10.0, clock=lambda: now[0])
    assert [rate.record() for _ in range(3)] == [False, False, False]
    assert rate.record() is True
    now[0] = 20.0  # the old resets left the window
    assert rate.record() is False


async def test_body_acknowledges_only_what_the_consumer_read() -> None:
    acked: list[int] = []
    body = H2Body(None, acked.append)
    body.feed(b"abc", 3)
    body.feed(b"", 10)  # padding only: given back at once
    body.feed(b"de", 7)  # 5 bytes of padding count against the window too
    assert acked == [10]
    assert body.buffered == 5
    assert await body.read() == b"abc"
    assert acked == [10, 3]
    body.feed_eof(Headers([("grpc-status", "0")]))
    assert [c async for c in body] == [b"de"]
    assert acked == [10, 3, 7]
    assert body.trailers is not None and body.trailers.get("grpc-status") == "0"


async def test_body_abort_cancels_the_stream_once() -> None:
    aborted: list[bool] = []
    body = H2Body(None, lambda n: None, lambda: aborted.append(True))
    body.feed(b"x", 1)
    body.abort()
    body.abort()
    assert aborted == [True] and body.buffered == 0
    done = H2Body(None, lambda n: None, lambda: aborted.append(True))
    done.feed_eof()
    done.abort()
    assert aborted == [True]  # a finished stream is not reset


async def test_body_read_waits_for_data_and_raises_errors() -> None:
    body = H2Body(None, lambda n: None)
    reader = asyncio.ensure_future(body.read())
    await asyncio.sleep(0)
    assert not reader.done()
    body.feed(b"late", 4)
    assert await reader == b"late"
    body.set_error(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await body.read()


def test_streams_in_flight_survive_the_peers_goaway() -> None:
    """nginx, for one, sends GOAWAY after 1000 requests with others in flight: the streams up
    to its last_stream_id still complete (RFC 9113 §6.8)."""
    import h2.config
    import h2.connection
    from hyperframe.frame import GoAwayFrame

    client = H2Conn(True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive(server.data_to_send())
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    # GOAWAY (stream 1 will still be answered), then the answer, in one read
    goaway = GoAwayFrame(stream_id=0, last_stream_id=1, error_code=0).serialize()
    server.send_headers(1, [(":status", "200")], end_stream=True)
    events = client.receive(goaway + server.data_to_send())
    assert [(e.kind, e.stream_id) for e in events] == [(h2conn.GOAWAY, 1), (h2conn.HEADERS, 1)]
    assert events[1].end_stream and not client.streams


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    """A peer announcing a 4.6 MB frame is not buffered up to it: the 9-byte header is
    enough for FRAME_SIZE_ERROR."""
    conn = H2Conn(False)
    conn.initiate()
    conn.data_to_send()
    assert conn.receive(H2_PREFACE + b"GET") == []
    with pytest.raises(ConnectionProtocolError) as err:
        conn.receive(b" / HTTP/1.1\r\n")
    assert err.value.code == wire.FRAME_SIZE_ERROR
    goaway = conn.data_to_send()
    assert goaway[3] == wire.GOAWAY and goaway[-4:] == b"\x00\x00\x00\x06"
