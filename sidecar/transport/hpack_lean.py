"""A lean HPACK encoder (RFC 7541) for the header blocks the sidecar sends, and a lean decoder
for the blocks it receives.

hpack's encoder spends most of its time keeping the dynamic table: searching it, inserting
every field and evicting old ones, and a proxy's per-request fields (traceparent,
x-request-id, grpc-timeout...) make that pure churn. This one keeps no dynamic table at all
(it announces size 0 on the first block, and again after every table-size change the peer's
SETTINGS bring): a field is an index into the static table when the whole (name, value) pair
is there, else a literal without indexing (never indexed for fields marked sensitive) with
the name as a static index when it can be. No Huffman coding: on a sidecar's loopback hop the
bytes saved do not pay for the CPU. Every field costs one dict lookup and a few byte
concatenations; the peer's decoder has no table to maintain either.

The decoder decodes everything a peer may send (its dynamic table is hpack's own HeaderTable,
so insertion and eviction are hpack's), in one loop over the block, with no per-field
logging, memoryview slices or HeaderTuple objects: hpack's decoder, for the same result, was
a seventh of a forwarded request's CPU. Errors are hpack's exception types, which h2 turns
into connection errors (OversizedHeaderListError into its DenialOfServiceError)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman
from hpack.struct import NeverIndexedHeaderTuple
from hpack.table import HeaderTable

# "Dynamic Table Size Update" to 0 (RFC 7541 §6.3).
_TABLE_SIZE_ZERO = b"\x20"


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix, `flags` in the bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _static_maps() -> tuple[
    dict[tuple[bytes, bytes], bytes], dict[bytes, bytes], dict[bytes, bytes]
]:
    pairs: dict[tuple[bytes, bytes], bytes] = {}
    names: dict[bytes, bytes] = {}
    never: dict[bytes, bytes] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        pairs.setdefault((name, value), _integer(index, 7, 0x80))
        names.setdefault(name, _integer(index, 4, 0x00))
        never.setdefault(name, _integer(index, 4, 0x10))
    return pairs, names, never


# Indexed field representations of the static table's (name, value) pairs, and the first
# bytes of a literal field without indexing / never indexed whose name is a static index.
_STATIC_PAIRS, _STATIC_NAMES, _STATIC_NAMES_NEVER = _static_maps()
# Value lengths below 127 are one byte: precomputed.
_SHORT_LENGTHS = [bytes((n,)) for n in range(127)]


def _length(n: int) -> bytes:
    return _SHORT_LENGTHS[n] if n < 127 else _integer(n, 7, 0x00)


def encode_fields(fields: Iterable[Any]) -> list[bytes]:
    """The representations of a header list's fields (bytes names and values), in order."""
    out: list[bytes] = []
    append = out.append
    pairs, names, never_names = _STATIC_PAIRS, _STATIC_NAMES, _STATIC_NAMES_NEVER
    for field in fields:
        name: bytes = field[0]
        value: bytes = field[1]
        never = isinstance(field, NeverIndexedHeaderTuple)
        if not never:
            indexed = pairs.get((name, value))
            if indexed is not None:
                append(indexed)
                continue
            prefix = names.get(name)
        else:
            prefix = never_names.get(name)
        if prefix is None:
            append(b"\x10" if never else b"\x00")
            append(_length(len(name)))
            append(name)
        else:
            append(prefix)
        append(_length(len(value)))
        append(value)
    return out


class LeanEncoder(hpack.Encoder):
    """What h2 needs of an encoder: `encode(headers)` and a settable `header_table_size`
    (h2 sets it when the peer's SETTINGS_HEADER_TABLE_SIZE changes)."""

    def __init__(self) -> None:
        super().__init__()
        self._announce_size = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # Our table stays empty, but a decoder that lowered its limit may insist on seeing a
        # size update before the next block (nghttp2 does): send one.
        self._announce_size = True

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        parts = encode_fields(headers)
        if self._announce_size:
            self._announce_size = False
            parts.insert(0, _TABLE_SIZE_ZERO)
        return b"".join(parts)


_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
# No peer needs an integer this large (2**28) in a header block; refusing it bounds the loop.
_MAX_INTEGER_SHIFT = 28


def _read_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1: (value, position after it)."""
    limit = (1 << prefix_bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HPACKDecodingError("truncated integer in a header block")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_INTEGER_SHIFT:
            raise HPACKDecodingError("integer too large in a header block")


def _read_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2: (octets, position after them), Huffman-decoded when flagged."""
    if pos >= len(data):
        raise HPACKDecodingError("truncated string in a header block")
    huffman = data[pos] & 0x80
    length, pos = _read_integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKDecodingError("truncated string in a header block")
    raw = data[pos:end]
    return (decode_huffman(raw) if huffman else raw), end


class LeanDecoder(hpack.Decoder):
    """What h2 needs of a decoder: `decode(block, raw=True)` returning bytes tuples, and the
    `max_header_list_size` and `max_allowed_table_size` attributes it sets from SETTINGS."""

    def decode(self, data: bytes, raw: bool = False) -> list[Any]:
        data = bytes(data)
        table = self.header_table
        limit = self.max_header_list_size
        headers: list[Any] = []
        size = 0
        pos = 0
        end = len(data)
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field
                index, pos = _read_integer(data, pos, 7)
                if 0 < index <= _STATIC_LENGTH:
                    name, value = _STATIC[index - 1]
                else:
                    name, value = table.get_by_index(index)
                headers.append((name, value))
            elif first & 0x40:  # literal, added to the dynamic table
                index, pos = _read_integer(data, pos, 6)
                if index:
                    name = table.get_by_index(index)[0]
                else:
                    name, pos = _read_string(data, pos)
                value, pos = _read_string(data, pos)
                table.add(name, value)
                headers.append((name, value))
            elif first & 0x20:  # dynamic table size update
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                new_size, pos = _read_integer(data, pos, 5)
                if new_size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                table.maxsize = new_size
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                index, pos = _read_integer(data, pos, 4)
                if index:
                    name = table.get_by_index(index)[0]
                else:
                    name, pos = _read_string(data, pos)
                value, pos = _read_string(data, pos)
                if first & 0x10:
                    headers.append(NeverIndexedHeaderTuple(name, value))
                else:
                    headers.append((name, value))
            size += len(name) + len(value) + 32
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        if table.maxsize > self.max_allowed_table_size:
            # The peer did not shrink its table after we lowered the maximum.
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return headers
