"""Our HTTP/2 codec (transport/h2conn.py) against the `h2` library as the reference: the same
byte streams fed to both give the same events, or are refused by both; what each end writes
is understood by the other; and the protections (concurrent streams, windows, frame sizes,
CONTINUATION, closed streams) hold."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.transport import h2conn
from sidecar.transport import h2wire as wire
from sidecar.transport.h2conn import ConnectionProtocolError, H2Conn

PREFACE = wire.PREFACE
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
POST = [(b":method", b"POST"), *REQUEST[1:]]

Outcome = list[tuple[Any, ...]]


def _block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return hpack.Encoder().encode(fields)


def headers(sid: int, fields: list[tuple[bytes, bytes]], end: bool = True) -> bytes:
    flags = {"END_HEADERS", "END_STREAM"} if end else {"END_HEADERS"}
    return HeadersFrame(sid, data=_block(fields), flags=flags).serialize()


def client_start() -> bytes:
    return PREFACE + SettingsFrame(0).serialize()


def via_h2(stream: bytes) -> Outcome:
    """h2's server side, with the inbound validation the sidecar used to run."""
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    out: Outcome = []
    try:
        events = conn.receive_data(stream)
    except h2.exceptions.ProtocolError:
        return [("refused",)]
    for e in events:
        if isinstance(e, h2.events.RequestReceived):
            out.append(("headers", e.stream_id, list(e.headers or []), False))
        elif isinstance(e, h2.events.DataReceived):
            out.append(("data", e.stream_id, e.data, e.flow_controlled_length, False))
        elif isinstance(e, h2.events.TrailersReceived):
            out.append(("trailers", e.stream_id, list(e.headers or []), False))
        elif isinstance(e, h2.events.StreamEnded):
            last = out.pop()
            out.append((*last[:-1], True))
        elif isinstance(e, h2.events.StreamReset):
            out.append(("reset", e.stream_id, e.error_code))
        elif isinstance(e, h2.events.WindowUpdated):
            out.append(("window", e.stream_id))
        elif isinstance(e, h2.events.ConnectionTerminated):
            out.append(("goaway", e.last_stream_id, e.error_code))
    return out


def via_ours(stream: bytes, chunk: int = 0) -> Outcome:
    """Our server side; with `chunk`, the bytes arrive that many at a time."""
    conn = H2Conn(False, max_header_list_size=65536)
    conn.initiate()
    out: Outcome = []
    pieces = (
        [stream] if not chunk else [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    )
    try:
        events = [e for piece in pieces for e in conn.receive(piece)]
    except ConnectionProtocolError:
        return [("refused",)]
    for e in events:
        if e.kind == h2conn.HEADERS:
            out.append(("headers", e.stream_id, e.headers, e.end_stream))
        elif e.kind == h2conn.DATA:
            out.append(("data", e.stream_id, e.data, e.flow_len, e.end_stream))
        elif e.kind == h2conn.TRAILERS:
            out.append(("trailers", e.stream_id, e.headers, e.end_stream))
        elif e.kind == h2conn.RESET:
            out.append(("reset", e.stream_id, e.code))
        elif e.kind == h2conn.LOCAL_RESET and e.code == wire.PROTOCOL_ERROR:
            return [("refused",)]  # a malformed message: h2 refuses the connection instead
        elif e.kind == h2conn.LOCAL_RESET:
            out.append(("reset", e.stream_id, e.code))
        elif e.kind == h2conn.WINDOW_UPDATE:
            out.append(("window", e.stream_id))
        elif e.kind == h2conn.GOAWAY:
            out.append(("goaway", e.stream_id, e.code))
    return out


def _padded_data(sid: int, data: bytes, pad: int, end: bool) -> bytes:
    frame = DataFrame(sid, data=data, flags={"END_STREAM"} if end else set())
    frame.pad_length = pad
    frame.flags.add("PADDED")
    return frame.serialize()


CASES: dict[str, bytes] = {
    "get": headers(1, REQUEST),
    "post with body and trailers": headers(1, POST, end=False)
    + DataFrame(1, data=b"hello").serialize()
    + _padded_data(1, b"world", 7, end=False)
    + headers(1, [(b"grpc-status", b"0")]),
    "body ending on data": headers(1, POST, end=False)
    + DataFrame(1, data=b"x" * 100, flags={"END_STREAM"}).serialize(),
    "two streams interleaved": headers(1, POST, end=False)
    + headers(3, REQUEST)
    + DataFrame(1, data=b"", flags={"END_STREAM"}).serialize(),
    "continuation": HeadersFrame(1, data=_block(REQUEST)[:3], flags={"END_STREAM"}).serialize()
    + ContinuationFrame(1, data=_block(REQUEST)[3:], flags={"END_HEADERS"}).serialize(),
    "priority ignored": PriorityFrame(1, depends_on=0, stream_weight=16).serialize()
    + headers(1, REQUEST),
    "ping, window update, goaway": PingFrame(0, opaque_data=b"12345678").serialize()
    + WindowUpdateFrame(0, window_increment=1000).serialize()
    + GoAwayFrame(0, last_stream_id=0, error_code=0).serialize(),
    "client reset": headers(1, POST, end=False) + RstStreamFrame(1, error_code=8).serialize(),
    "host agrees with authority": headers(1, [*REQUEST, (b"host", b"a")]),
    "host instead of authority": headers(
        1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"a")]
    ),
    "te trailers": headers(1, [*REQUEST, (b"te", b"trailers")]),
    # refused, by both
    "uppercase name": headers(1, [*REQUEST, (b"X-Up", b"v")]),
    "connection field": headers(1, [*REQUEST, (b"connection", b"close")]),
    "te other than trailers": headers(1, [*REQUEST, (b"te", b"gzip")]),
    "pseudo after regular": headers(1, [*REQUEST[:3], (b"x", b"y"), REQUEST[3]]),
    "duplicate pseudo": headers(1, [*REQUEST, (b":path", b"/again")]),
    "unknown pseudo": headers(1, [*REQUEST, (b":foo", b"bar")]),
    "status in request": headers(1, [*REQUEST, (b":status", b"200")]),
    "empty path": headers(1, [*REQUEST[:3], (b":path", b"")]),
    "no method": headers(1, REQUEST[1:]),
    "no path": headers(1, REQUEST[:3]),
    "no authority nor host": headers(1, [REQUEST[0], REQUEST[1], REQUEST[3]]),
    "host differs": headers(1, [*REQUEST, (b"host", b"b")]),
    "two hosts": headers(1, [REQUEST[0], REQUEST[1], REQUEST[3], (b"host", b"a"), (b"host", b"a")]),
    "CR in value": headers(1, [*REQUEST, (b"x", b"a\rb")]),
    "NUL in value": headers(1, [*REQUEST, (b"x", b"a\x00b")]),
    "space around value": headers(1, [*REQUEST, (b"x", b" v")]),
    "space in name": headers(1, [*REQUEST, (b"x y", b"v")]),
    "colon in name": headers(1, [*REQUEST, (b"x:y", b"v")]),
    "empty name": headers(1, [*REQUEST, (b"", b"v")]),
    "pseudo in trailers": headers(1, POST, end=False) + headers(1, [(b":path", b"/")]),
    "trailers without end stream": headers(1, POST, end=False)
    + headers(1, [(b"x", b"y")], end=False),
    "protocol outside connect": headers(1, [*REQUEST, (b":protocol", b"websocket")]),
    "data on stream 0": DataFrame(0, data=b"x").serialize()
    if False
    else b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",
    "data on idle stream": DataFrame(1, data=b"x").serialize(),
    "data after end stream": headers(1, REQUEST) + DataFrame(1, data=b"x").serialize(),
    "headers on even stream": headers(2, REQUEST),
    "stream id going down": headers(3, REQUEST) + headers(1, REQUEST),
    "naked continuation": ContinuationFrame(1, data=b"", flags={"END_HEADERS"}).serialize(),
    "interrupted header block": HeadersFrame(1, data=_block(REQUEST)[:3]).serialize()
    + PingFrame(0).serialize(),
    "settings on a stream": b"\x00\x00\x00\x04\x00\x00\x00\x00\x01",
    "settings of 5 bytes": b"\x00\x00\x05\x04\x00\x00\x00\x00\x00abcde",
    "ping of 7 bytes": b"\x00\x00\x07\x06\x00\x00\x00\x00\x00abcdefg",
    "connection window overflow": WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(),
    "zero window update": WindowUpdateFrame(0, window_increment=0).serialize(),
    "rst on idle stream": RstStreamFrame(1, error_code=8).serialize(),
    "push promise from a client": b"\x00\x00\x04\x05\x04\x00\x00\x00\x01\x00\x00\x00\x02",
    "oversized frame": b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 16385,
    "bad hpack index": HeadersFrame(1, data=b"\xff\x80", flags={"END_HEADERS"}).serialize(),
    "body longer than content-length": headers(1, [*POST, (b"content-length", b"3")], end=False)
    + DataFrame(1, data=b"four", flags={"END_STREAM"}).serialize(),
    "body shorter than content-length": headers(1, [*POST, (b"content-length", b"5")], end=False)
    + DataFrame(1, data=b"four", flags={"END_STREAM"}).serialize(),
    "stream window overflow": headers(1, POST, end=False)
    + WindowUpdateFrame(1, window_increment=2**31 - 1).serialize(),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_events_or_refusal_as_h2(name: str) -> None:
    stream = client_start() + CASES[name]
    expected = via_h2(stream)
    assert via_ours(stream) == expected
    assert via_ours(stream, chunk=7) == expected  # frames split across reads


def test_the_differential_table_covers_both_outcomes() -> None:
    outcomes = [via_h2(client_start() + s) == [("refused",)] for s in CASES.values()]
    assert 15 < sum(outcomes) < len(outcomes) - 8


_name_chars = st.sampled_from([*b"abcxyz-_09:", 0x41, 0x20, 0x7F, 0x80, 0x00])
_value_chars = st.sampled_from([*b"abc /;=", 0x09, 0x0A, 0x0D, 0x00, 0x80, 0xFF])
_fields = st.lists(
    st.tuples(
        st.sampled_from([b"host", b"te", b"connection", b":path", b":authority", b"x-a"])
        | st.lists(_name_chars, min_size=0, max_size=6).map(bytes),
        st.sampled_from([b"trailers", b"a", b""]) | st.lists(_value_chars, max_size=6).map(bytes),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(prefix=st.permutations(REQUEST), extra=_fields, trailers=st.none() | _fields)
def test_random_header_lists_are_judged_as_h2_judges_them(
    prefix: list[tuple[bytes, bytes]],
    extra: list[tuple[bytes, bytes]],
    trailers: list[tuple[bytes, bytes]] | None,
) -> None:
    fields = [*prefix, *extra]
    if trailers is None:
        stream = client_start() + headers(1, fields)
    else:
        stream = client_start() + headers(1, fields, end=False) + headers(1, trailers)
    assert via_ours(stream) == via_h2(stream)


# ------------------------------------------------------------------ interoperation


def _h2_server() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    return conn


def test_our_client_and_h2s_server_exchange_a_request_and_a_streamed_response() -> None:
    client, server = H2Conn(True, stream_window=1 << 20, connection_window=4 << 20), _h2_server()
    client.initiate()
    server.receive_data(client.data_to_send())
    client.receive(server.data_to_send())
    client.send_headers(1, [*POST, (b"x-long", b"v" * 20000)])  # HEADERS + CONTINUATION
    client.send_data(1, b"ping", end_stream=True)
    events = server.receive_data(client.data_to_send())
    got = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert got.headers is not None and (b"x-long", b"v" * 20000) in list(got.headers)
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [b"ping"]
    # h2 sees our larger windows: 200 KB fit without a WINDOW_UPDATE from us
    assert server.local_flow_control_window(1) == (1 << 20)
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    for _ in range(13):
        server.send_data(1, b"x" * 16384)
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    out = client.receive(server.data_to_send())
    assert out[0].kind == h2conn.HEADERS and out[0].headers is not None
    assert out[0].headers[0] == (b":status", b"200")
    assert sum(len(e.data) for e in out if e.kind == h2conn.DATA) == 13 * 16384
    assert out[-1].kind == h2conn.TRAILERS and out[-1].headers == [(b"grpc-status", b"0")]
    assert not client.streams  # both ends closed: forgotten


def test_h2s_client_is_understood_by_our_server_and_reads_its_answer() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = H2Conn(False, stream_window=1 << 20, connection_window=4 << 20)
    client.initiate_connection()
    server.initiate()
    events = server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(k.decode(), v.decode()) for k, v in POST], end_stream=False)
    client.send_data(1, b"body", end_stream=True)
    events = server.receive(client.data_to_send())
    assert (
        [(e.kind, e.end_stream) for e in events]
        == [
            (h2conn.SETTINGS, False),  # h2's SETTINGS ack of ours carries nothing; its own
            (h2conn.HEADERS, False),
            (h2conn.DATA, True),
        ][-len(events) :]
    )
    server.acknowledge(1, 4)
    server.send_headers(1, [(b":status", b"200"), (b"x-k", b"v")])
    server.send_data(1, b"answer")
    server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    got = client.receive_data(server.data_to_send())
    kinds = [type(e) for e in got]
    assert kinds[-4:] == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.TrailersReceived,
        h2.events.StreamEnded,
    ]
    assert not server.streams


def _pair(**server_args: int) -> tuple[h2.connection.H2Connection, H2Conn]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = H2Conn(False, **server_args)
    client.initiate_connection()
    server.initiate()
    server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive(client.data_to_send())
    return client, server


def _request(client: h2.connection.H2Connection, end: bool = True) -> int:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(k.decode(), v.decode()) for k, v in POST], end_stream=end)
    return sid


def test_streams_over_the_limit_are_refused() -> None:
    client, server = _pair(max_concurrent_streams=2)
    # h2 itself would stop at the limit we announced: write the third stream by hand
    for _ in range(2):
        _request(client, end=False)
    wire_bytes = client.data_to_send() + headers(5, POST, end=False)
    events = server.receive(wire_bytes)
    assert [e.stream_id for e in events if e.kind == h2conn.HEADERS] == [1, 3]
    assert wire.rst_stream_frame(5, wire.REFUSED_STREAM) in server.data_to_send()
    server.reset_stream(1, wire.CANCEL)  # one finishes: the next is accepted
    assert [e.kind for e in server.receive(headers(7, POST))] == [h2conn.HEADERS]


def test_flow_control_windows_both_ways() -> None:
    client, server = _pair(stream_window=65535, connection_window=65535)
    sid = _request(client, end=False)
    server.receive(client.data_to_send())
    # the client may send 65,535 bytes; one more is a flow-control error
    client.send_data(sid, b"x" * 16384)
    events = server.receive(client.data_to_send())
    assert sum(e.flow_len for e in events) == 16384
    server.acknowledge(sid, 16384)
    assert server.data_to_send() == b""  # below half the window: no update yet
    server.acknowledge(sid, 20000)
    updates = server.data_to_send()
    assert wire.window_update_frame(0, 36384) in updates
    assert wire.window_update_frame(sid, 36384) in updates
    # our side: no more than the peer's window
    server.send_headers(sid, [(b":status", b"200")])
    assert server.local_window(sid) == 65535
    server.send_data(sid, b"y" * 16384)
    assert server.local_window(sid) == 65535 - 16384
    client.receive_data(server.data_to_send())
    client.increment_flow_control_window(16384, sid)
    client.increment_flow_control_window(16384)
    events = server.receive(client.data_to_send())
    assert [(e.kind, e.stream_id) for e in events] == [
        (h2conn.WINDOW_UPDATE, sid),
        (h2conn.WINDOW_UPDATE, 0),
    ]
    assert server.local_window(sid) == 65535


def test_data_beyond_the_stream_window_resets_the_stream() -> None:
    client, server = _pair(stream_window=100, connection_window=65535)
    server.receive(client.data_to_send())
    sid = 1
    frames = headers(sid, POST, end=False) + DataFrame(sid, data=b"x" * 101).serialize()
    events = server.receive(frames)
    assert [e.kind for e in events] == [h2conn.HEADERS, h2conn.LOCAL_RESET]
    assert wire.rst_stream_frame(sid, wire.FLOW_CONTROL_ERROR) in server.data_to_send()


def test_late_frames_on_closed_streams() -> None:
    """DATA for a stream we reset is dropped (its window given back); DATA on a stream both
    ends finished gets RST_STREAM(STREAM_CLOSED); the connection carries on in both cases."""
    client, server = _pair()
    sid = _request(client, end=False)
    server.receive(client.data_to_send())
    server.reset_stream(sid, wire.CANCEL)
    server.data_to_send()
    assert server.receive(DataFrame(sid, data=b"late").serialize()) == []
    assert server.data_to_send() == b""
    server.receive(headers(3, REQUEST))
    server.send_headers(3, [(b":status", b"204")], end_stream=True)
    server.data_to_send()
    assert server.receive(DataFrame(3, data=b"x").serialize()) == []
    assert server.data_to_send() == wire.rst_stream_frame(3, wire.STREAM_CLOSED)
    assert [e.kind for e in server.receive(headers(5, REQUEST))] == [h2conn.HEADERS]


def test_a_continuation_flood_is_cut_off() -> None:
    conn = H2Conn(False)
    conn.initiate()
    conn.receive(client_start() + HeadersFrame(1, data=b"\x82").serialize())
    flood = ContinuationFrame(1, data=b"\x00" * 1000).serialize()
    with pytest.raises(ConnectionProtocolError) as err:
        for _ in range(h2conn.MAX_CONTINUATIONS + 1):
            conn.receive(flood)
    assert err.value.code == wire.ENHANCE_YOUR_CALM


def test_large_header_blocks_go_out_in_continuation_frames() -> None:
    server = H2Conn(False)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.initiate()
    server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(k.decode(), v.decode()) for k, v in REQUEST], end_stream=True)
    server.receive(client.data_to_send())
    big = [(b":status", b"200"), *[(f"x-{i}".encode(), b"v" * 1000) for i in range(40)]]
    server.send_headers(1, big, end_stream=True)
    out = server.data_to_send()
    assert out[3] == wire.HEADERS and wire.CONTINUATION in {out[i + 3] for i in (16393,)}
    got = client.receive_data(out)
    response = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert response.headers is not None and len(list(response.headers)) == 41


def test_settings_are_acknowledged_and_pings_answered() -> None:
    conn = H2Conn(False)
    conn.initiate()
    conn.data_to_send()
    events = conn.receive(
        client_start()
        + SettingsFrame(0, settings={4: 1000, 5: 32768, 1: 0}).serialize()
        + PingFrame(0, opaque_data=b"abcdefgh").serialize()
    )
    assert [e.kind for e in events] == [h2conn.SETTINGS, h2conn.SETTINGS]
    out = conn.data_to_send()
    assert out.count(wire.SETTINGS_ACK) == 2
    assert wire.ping_ack_frame(b"abcdefgh") in out
    assert conn.max_outbound_frame_size == 32768


def _client_pair() -> tuple[H2Conn, h2.connection.H2Connection]:
    client, server = H2Conn(True), _h2_server()
    client.initiate()
    server.receive_data(client.data_to_send())
    client.receive(server.data_to_send())
    return client, server


@pytest.mark.parametrize(
    ("method", "status", "end_on_headers"),
    [(b"HEAD", b"200", True), (b"HEAD", b"200", False), (b"GET", b"304", False)],
)
def test_responses_stating_a_length_without_a_body(
    method: bytes, status: bytes, end_on_headers: bool
) -> None:
    """HEAD responses and 304s carry the representation's content-length with no body."""
    client, server = _client_pair()
    client.send_headers(1, [(b":method", method), *REQUEST[1:]], end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", status), ("content-length", "1234")], end_on_headers)
    if not end_on_headers:
        server.end_stream(1)
    events = client.receive(server.data_to_send())
    assert h2conn.LOCAL_RESET not in [e.kind for e in events]
    assert events[0].kind == h2conn.HEADERS and not client.streams


def test_a_body_shorter_than_its_content_length_resets_the_response() -> None:
    client, server = _client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.config.validate_outbound_headers = False
    server.send_headers(1, [(":status", "200"), ("content-length", "10")])
    server.send_data(1, b"short", end_stream=True)
    events = client.receive(server.data_to_send())
    assert [e.kind for e in events] == [h2conn.HEADERS, h2conn.LOCAL_RESET]
