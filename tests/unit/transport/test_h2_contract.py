"""Contract of the h2/hpack internals sidecar/transport/h2_common.py relies on besides the
GOAWAY state machine and the frame buffer (pinned in test_h2_common.py): h2 encodes every
header block with the connection's `encoder` attribute, which new_connection replaces with
an encoder that never Huffman-codes. If an h2 release stops going through `conn.encoder`,
headers would silently be Huffman-coded again (correct, but 3x the CPU per response head)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hpack

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
