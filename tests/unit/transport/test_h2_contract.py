"""Contract of the h2/hpack internals sidecar/transport/h2_common.py relies on besides the
GOAWAY state machine and the frame buffer (pinned in test_h2_common.py): h2 encodes every
header block with the connection's `encoder` attribute, which new_connection replaces with
an encoder that never Huffman-codes. If an h2 release stops going through `conn.encoder`,
headers would silently be Huffman-coded again (correct, but 3x the CPU per response head)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import hyperframe.frame
import pytest

from sidecar.transport.h2_common import new_connection

VALUE = "a-header-value-huffman-would-shrink"
REQUEST = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]


def test_header_blocks_go_through_the_replaced_encoder_uncompressed() -> None:
    client = new_connection(client_side=True)
    assert isinstance(client.encoder, hpack.Encoder)
    client.initiate_connection()
    client.data_to_send()
    client.send_headers(1, [*REQUEST, ("x-probe", VALUE)], end_stream=True)
    wire = client.data_to_send()
    # A Huffman-coded literal would not contain the value's bytes as written.
    assert VALUE.encode() in wire


def test_uncompressed_blocks_decode_as_sent() -> None:
    client = new_connection(client_side=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.send_headers(1, [*REQUEST, ("x-probe", VALUE)], end_stream=True)
    events = server.receive_data(client.data_to_send())
    received = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert received.headers is not None
    assert (b"x-probe", VALUE.encode()) in list(received.headers)


def _pair(
    server: h2.connection.H2Connection,
) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = new_connection(client_side=True)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return client, server


def _plain_server() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    return h2.connection.H2Connection(config)


def test_received_frames_are_not_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract for h2_common._Connection: h2 handles each received frame in
    `_receive_frame`, which ours replaces to skip h2's repr() of every frame."""

    def no_repr(self: object) -> str:
        raise AssertionError("a received frame was formatted")

    monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", no_repr)
    client, server = _pair(new_connection(client_side=False))
    client.send_headers(1, REQUEST, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.RequestReceived) for e in events)
    with pytest.raises(AssertionError, match="formatted"):
        _pair(_plain_server())


def _late_frames(server: h2.connection.H2Connection) -> list[object]:
    """Frames on streams that are over: after our RST_STREAM, and after both ends ended."""
    client, server = _pair(server)
    client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    server.receive_data(client.data_to_send())
    server.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    server.data_to_send()
    client.send_data(1, b"late body")
    seen: list[object] = [type(e) for e in server.receive_data(client.data_to_send())]
    seen.append(server.data_to_send())
    client.send_headers(3, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(3, [(":status", "200")], end_stream=True)
    server.data_to_send()
    try:
        seen += [
            type(e) for e in server.receive_data(hyperframe.frame.DataFrame(3, b"x").serialize())
        ]
    except h2.exceptions.ProtocolError as exc:
        seen.append(type(exc))
    seen.append(server.data_to_send())
    return seen


def test_frames_on_closed_streams_are_handled_as_h2_does() -> None:
    """The replaced `_receive_frame` keeps h2's answers to frames on closed streams."""
    ours = _late_frames(new_connection(client_side=False))
    assert ours == _late_frames(_plain_server())
    # DATA after both ends ended: RST_STREAM(STREAM_CLOSED), the connection carries on
    rst = hyperframe.frame.RstStreamFrame(3, error_code=h2.errors.ErrorCodes.STREAM_CLOSED)
    assert ours[-1] == rst.serialize()
