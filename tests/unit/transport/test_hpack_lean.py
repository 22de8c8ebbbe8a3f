"""The lean HPACK encoder: what it writes must decode, with a reference decoder (hpack's),
to exactly the fields given, across the representations it uses; and it must never make the
peer keep a dynamic table."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.transport.h2_common import new_connection
from sidecar.transport.hpack_lean import LeanDecoder, LeanEncoder

FIELDS: list[tuple[bytes, bytes]] = [
    (b":method", b"GET"),  # a whole static pair: one byte
    (b":path", b"/v1/items?id=7"),  # static name, literal value
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),  # literal name
    (b"x-long", b"v" * 300),  # lengths past the 7-bit prefix
    (b"x" * 200, b""),  # a long name, an empty value
    (b"x-latin", bytes(range(0x80, 0x100))),  # obs-text passes as bytes
]


def test_blocks_decode_to_the_fields_given_and_leave_no_dynamic_table() -> None:
    encoder, decoder = LeanEncoder(), hpack.Decoder()
    for _ in range(3):
        block = encoder.encode(FIELDS)
        assert list(decoder.decode(block, raw=True)) == FIELDS
    assert len(decoder.header_table.dynamic_entries) == 0
    assert decoder.header_table_size == 0  # the first block announced size 0


def test_sensitive_fields_are_sent_never_indexed() -> None:
    block = LeanEncoder().encode(
        [
            NeverIndexedHeaderTuple(b"authorization", b"secret"),
            NeverIndexedHeaderTuple(b"x-k", b"v"),
        ]
    )
    decoded = list(hpack.Decoder().decode(block, raw=True))
    assert decoded == [(b"authorization", b"secret"), (b"x-k", b"v")]
    assert all(isinstance(f, NeverIndexedHeaderTuple) for f in decoded)


def test_a_table_size_change_is_answered_with_a_size_update() -> None:
    """A decoder that lowered its table size may require a size update on the next block."""
    encoder = LeanEncoder()
    assert encoder.encode([(b":method", b"GET")])[:1] == b"\x20"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.header_table_size = 0  # what h2 does when the peer's SETTINGS change it
    assert encoder.encode([(b":method", b"GET")]) == b"\x20\x82"


def test_h2_sends_through_the_lean_encoder_after_a_settings_change() -> None:
    """Contract: h2 encodes with `conn.encoder` and sets its header_table_size on SETTINGS."""
    client = new_connection(client_side=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the client's SETTINGS ack
    assert isinstance(client.encoder, LeanEncoder)
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
    for sid in (1, 3):
        client.send_headers(sid, [*request, ("x-request-id", f"id-{sid}")], end_stream=True)
        events = server.receive_data(client.data_to_send())
        got = next(e for e in events if isinstance(e, h2.events.RequestReceived))
        assert got.headers is not None and (b"x-request-id", f"id-{sid}".encode()) in got.headers
    assert len(server.decoder.header_table.dynamic_entries) == 0


_names = st.sampled_from([b":path", b"content-type", b"x-request-id", b"traceparent", b"cookie"])
_fields = st.lists(
    st.tuples(
        _names | st.binary(min_size=1, max_size=20).map(lambda b: b"x-" + b.hex().encode()),
        st.binary(max_size=300),
        st.booleans(),  # sensitive: never indexed
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(st.tuples(_fields, st.booleans()), min_size=1, max_size=6),
    table_size=st.sampled_from([0, 64, 256, 4096]),
)
def test_decoder_agrees_with_hpack_across_blocks(
    blocks: list[tuple[list[tuple[bytes, bytes, bool]], bool]], table_size: int
) -> None:
    """Whatever a full HPACK encoder sends (Huffman or not, indexed, dynamic table entries
    evicted, size updates), ours decodes it as hpack's reference decoder does."""
    encoder, ours, reference = hpack.Encoder(), LeanDecoder(), hpack.Decoder()
    encoder.header_table_size = table_size
    for fields, huffman in blocks:
        headers = [NeverIndexedHeaderTuple(k, v) if s else (k, v) for k, v, s in fields]
        block = encoder.encode(headers, huffman=huffman)
        expected = list(reference.decode(block, raw=True))
        got = ours.decode(block, raw=True)
        assert got == expected
        assert [isinstance(f, NeverIndexedHeaderTuple) for f in got] == [
            isinstance(f, NeverIndexedHeaderTuple) for f in expected
        ]
    assert list(ours.header_table.dynamic_entries) == list(reference.header_table.dynamic_entries)


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x80\x01",  # an index past any table (and a huge integer)
        b"\xbf",  # dynamic index with an empty table
        b"\x40\x05ab",  # truncated name
        b"\x00\x01a\x7f",  # truncated length
        b"\x82\x20",  # size update after a field
        b"\x3f\xe1\x3f",  # size update above the allowed maximum
        b"\x00\x81\xff\x01a",  # invalid Huffman
    ],
)
def test_malformed_blocks_raise_hpack_errors(block: bytes) -> None:
    with pytest.raises(HPACKDecodingError):
        LeanDecoder().decode(block, raw=True)
    with pytest.raises(HPACKDecodingError):
        hpack.Decoder().decode(block, raw=True)


def test_oversized_header_list_is_refused() -> None:
    decoder = LeanDecoder()
    decoder.max_header_list_size = 100
    block = LeanEncoder().encode([(b"x-a", b"v" * 40), (b"x-b", b"v" * 40)])
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)


def test_h2_decodes_with_the_lean_decoder() -> None:
    """Contract: h2 decodes header blocks with `conn.decoder`, as bytes (`raw=True`)."""
    server = new_connection(client_side=False)
    assert isinstance(server.decoder, LeanDecoder)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
    client.send_headers(1, [*request, ("x-k", "v")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    got = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert got.headers is not None and (b"x-k", b"v") in got.headers
    assert len(server.decoder.header_table.dynamic_entries) > 0  # h2's client indexes
