"""The lean HPACK encoder and decoder: what the encoder writes must decode, with a reference
decoder (hpack's), to exactly the fields given, and never make the peer keep a dynamic table;
the decoder (its own dynamic table and Huffman decoder) must decode whatever a full HPACK
encoder writes as hpack's reference decoder does."""

from __future__ import annotations

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.transport.hpack_lean import (
    HpackError,
    LeanDecoder,
    LeanEncoder,
    OversizedHeaderList,
    decode_huffman,
)

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


def test_a_table_size_change_is_answered_with_a_size_update() -> None:
    """A decoder that lowered its table size may require a size update on the next block."""
    encoder = LeanEncoder()
    assert encoder.encode([(b":method", b"GET")])[:1] == b"\x20"
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    encoder.header_table_size = 0  # what h2 does when the peer's SETTINGS change it
    assert encoder.encode([(b":method", b"GET")]) == b"\x20\x82"


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
        assert ours.decode(block) == [(k, v) for k, v in expected]
    assert ours.dynamic_entries == list(reference.header_table.dynamic_entries)


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
    with pytest.raises(HpackError):
        LeanDecoder().decode(block)
    with pytest.raises(HPACKDecodingError):
        hpack.Decoder().decode(block, raw=True)


def test_oversized_header_list_is_refused() -> None:
    decoder = LeanDecoder(max_header_list_size=100)
    block = LeanEncoder().encode([(b"x-a", b"v" * 40), (b"x-b", b"v" * 40)])
    with pytest.raises(OversizedHeaderList):
        decoder.decode(block)


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_huffman_strings_decode_to_what_was_coded(raw: bytes) -> None:
    assert decode_huffman(_HUFFMAN.encode(raw)) == raw


@pytest.mark.parametrize(
    "coded",
    [
        b"\xff\xff\xff\xff",  # EOS (30 one-bits) inside the string
        b"\x1f\xff",  # 'a' then 11 one-bits of padding: more than 7
        b"\x00",  # '0' (00000) then zero-bit padding
    ],
)
def test_bad_huffman_strings_are_errors(coded: bytes) -> None:
    with pytest.raises(HpackError):
        decode_huffman(coded)
    with pytest.raises(HPACKDecodingError):
        hpack.Decoder().decode(b"\x00\x01a" + bytes((0x80 | len(coded),)) + coded)
