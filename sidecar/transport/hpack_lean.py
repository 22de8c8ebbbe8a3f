"""A lean HPACK encoder (RFC 7541) for the header blocks the sidecar sends, and a decoder with
its own dynamic table for the blocks it receives; both written for mypyc.

hpack's encoder spends most of its time keeping the dynamic table: searching it, inserting
every field and evicting old ones, and a proxy's per-request fields (traceparent,
x-request-id, grpc-timeout...) make that pure churn. This one keeps no dynamic table at all
(it announces size 0 on the first block, and again after every table-size change the peer's
SETTINGS bring): a field is an index into the static table when the whole (name, value) pair
is there, else a literal without indexing with the name as a static index when it can be. No
Huffman coding: on a sidecar's loopback hop the bytes saved do not pay for the CPU. Every
field costs one dict lookup and a few byte concatenations; the peer's decoder has no table
to maintain either.

The decoder decodes everything a peer may send (dynamic table with insertion and eviction,
size updates, Huffman strings through a nibble-driven state machine built at import from the
RFC's code table), in one loop over the block. Never-indexed fields come out as plain tuples:
the sidecar re-encodes what it forwards without indexing anyway."""

from __future__ import annotations

from sidecar.transport.hpack_tables import HUFFMAN_CODES, HUFFMAN_LENGTHS, STATIC_TABLE


class HpackError(Exception):
    """A header block that cannot be decoded: a COMPRESSION_ERROR for the connection."""


class OversizedHeaderList(HpackError):
    """The decoded header list is larger than the limit we advertised."""


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


def _static_maps() -> tuple[dict[bytes, dict[bytes, bytes]], dict[bytes, bytes]]:
    pairs: dict[bytes, dict[bytes, bytes]] = {}
    names: dict[bytes, bytes] = {}
    for index, (name, value) in enumerate(STATIC_TABLE, start=1):
        if value:
            pairs.setdefault(name, {}).setdefault(value, _integer(index, 7, 0x80))
        names.setdefault(name, _integer(index, 4, 0x00))
    return pairs, names


# Indexed field representations of the static table's (name, value) pairs, by name then
# value (only a few names have static values: most fields cost one lookup, and no hashing
# of their value), and the first bytes of a literal field without indexing whose name is a
# static index.
_STATIC_PAIRS, _STATIC_NAMES = _static_maps()
# Value lengths below 127 are one byte: precomputed.
_SHORT_LENGTHS = [bytes((n,)) for n in range(127)]


def _length(n: int) -> bytes:
    return _SHORT_LENGTHS[n] if n < 127 else _integer(n, 7, 0x00)


def encode_fields(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The representations of a header list's fields (bytes names and values), in order."""
    out: list[bytes] = []
    append = out.append
    pairs, names = _STATIC_PAIRS, _STATIC_NAMES
    short = _SHORT_LENGTHS
    for name, value in fields:
        values = pairs.get(name)
        if values is not None:
            indexed = values.get(value)
            if indexed is not None:
                append(indexed)
                continue
        prefix = names.get(name)
        if prefix is None:
            append(b"\x00")
            append(_length(len(name)))
            append(name)
        else:
            append(prefix)
        n = len(value)
        append(short[n] if n < 127 else _integer(n, 7, 0x00))
        append(value)
    return out


class LeanEncoder:
    """`encode(fields)`, and `header_table_size`, set when the peer's
    SETTINGS_HEADER_TABLE_SIZE arrives."""

    def __init__(self) -> None:
        self._announce_size = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # Our table stays empty, but a decoder that lowered its limit may insist on seeing a
        # size update before the next block (nghttp2 does): send one.
        self._announce_size = True

    def encode(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        parts = encode_fields(fields)
        if self._announce_size:
            self._announce_size = False
            parts.insert(0, _TABLE_SIZE_ZERO)
        return b"".join(parts)


def _huffman_machine() -> tuple[list[int], list[int], list[bool]]:
    """A state machine that decodes Huffman strings four bits at a time (the shortest code
    has five bits, so a nibble completes at most one symbol). States are the code tree's
    inner nodes (0 is the root). For state s and nibble n, index s*16+n: the next state, and
    the symbol completed (-1 none, -2 an error: EOS in a string). A string may end only in a
    state reached from the root by fewer than 8 one-bits (the padding)."""
    # The code tree: children[node] = [zero child, one child]; leaves are ~symbol.
    children: list[list[int]] = [[0, 0]]
    for symbol, (code, length) in enumerate(zip(HUFFMAN_CODES, HUFFMAN_LENGTHS, strict=True)):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = ~symbol
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    states = len(children)
    nexts = [0] * (states * 16)
    symbols = [-1] * (states * 16)
    for state in range(states):
        for nibble in range(16):
            node, emitted = state, -1
            for i in range(3, -1, -1):
                child = children[node][(nibble >> i) & 1]
                if child < 0:
                    emitted = -2 if ~child == 256 else ~child
                    node = 0
                else:
                    node = child
            nexts[state * 16 + nibble] = node
            symbols[state * 16 + nibble] = emitted
    accepting = [False] * states
    node = 0
    for _ in range(8):
        accepting[node] = True
        node = children[node][1]
    return nexts, symbols, accepting


_HUFFMAN_NEXT, _HUFFMAN_SYMBOL, _HUFFMAN_ACCEPT = _huffman_machine()


def decode_huffman(data: bytes) -> bytes:
    nexts, symbols = _HUFFMAN_NEXT, _HUFFMAN_SYMBOL
    out = bytearray()
    state = 0
    for byte in data:
        i = state * 16 + (byte >> 4)
        symbol = symbols[i]
        if symbol >= 0:
            out.append(symbol)
        elif symbol == -2:
            raise HpackError("EOS in a Huffman-coded string")
        state = nexts[i]
        i = state * 16 + (byte & 0x0F)
        symbol = symbols[i]
        if symbol >= 0:
            out.append(symbol)
        elif symbol == -2:
            raise HpackError("EOS in a Huffman-coded string")
        state = nexts[i]
    if not _HUFFMAN_ACCEPT[state]:
        raise HpackError("invalid padding in a Huffman-coded string")
    return bytes(out)


_STATIC_LENGTH = len(STATIC_TABLE)
# No peer needs an integer this large (2**28) in a header block; refusing it bounds the loop.
_MAX_INTEGER_SHIFT = 28
DEFAULT_TABLE_SIZE = 4096


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
            raise HpackError("truncated integer in a header block")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_INTEGER_SHIFT:
            raise HpackError("integer too large in a header block")


_HUFFMAN_CACHE_SIZE = 128
_HUFFMAN_CACHED_LENGTH = 64


def _read_string(data: bytes, pos: int, cache: dict[bytes, bytes]) -> tuple[bytes, int]:
    """RFC 7541 §5.2: (octets, position after them), Huffman-decoded when flagged."""
    if pos >= len(data):
        raise HpackError("truncated string in a header block")
    huffman = data[pos] & 0x80
    length, pos = _read_integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("truncated string in a header block")
    raw = data[pos:end]
    if not huffman:
        return raw, end
    if length > _HUFFMAN_CACHED_LENGTH:
        return decode_huffman(raw), end
    decoded = cache.get(raw)
    if decoded is None:
        decoded = decode_huffman(raw)
        if len(cache) >= _HUFFMAN_CACHE_SIZE:
            cache.clear()
        cache[raw] = decoded
    return decoded, end


class LeanDecoder:
    """Decodes header blocks into (name, value) bytes tuples. The dynamic table is a list,
    newest entry last; `max_allowed_table_size` is what our SETTINGS_HEADER_TABLE_SIZE
    allows the peer, `max_header_list_size` the decoded size (RFC 9113 §6.5.2) we accept."""

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self.table_size = DEFAULT_TABLE_SIZE  # the peer's current maximum
        self._entries: list[tuple[bytes, bytes]] = []
        self._used = 0
        # Peers that index nothing (nginx) send the same Huffman strings on every response
        # (server, content-type, the date of this second): decoded once per connection.
        self._huffman: dict[bytes, bytes] = {}

    @property
    def dynamic_entries(self) -> list[tuple[bytes, bytes]]:
        """Newest first, as RFC 7541 indexes them."""
        return self._entries[::-1]

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LENGTH:
            return STATIC_TABLE[index - 1]
        entries = self._entries
        k = index - _STATIC_LENGTH
        if index <= 0 or k > len(entries):
            raise HpackError(f"invalid table index {index}")
        return entries[len(entries) - k]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        entries = self._entries
        if size > self.table_size:
            entries.clear()
            self._used = 0
            return
        self._used += size
        entries.append((name, value))
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        drop = 0
        while self._used > self.table_size:
            name, value = entries[drop]
            self._used -= len(name) + len(value) + 32
            drop += 1
        if drop:
            del entries[:drop]

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        limit = self.max_header_list_size
        cache = self._huffman
        headers: list[tuple[bytes, bytes]] = []
        size = 0
        pos = 0
        end = len(data)
        name: bytes
        value: bytes
        while pos < end:
            first = data[pos]
            if first & 0x80:  # indexed field
                index, pos = _read_integer(data, pos, 7)
                field = STATIC_TABLE[index - 1] if 0 < index <= _STATIC_LENGTH else self._get(index)
                name, value = field
                headers.append(field)
            elif first & 0x40:  # literal, added to the dynamic table
                index, pos = _read_integer(data, pos, 6)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _read_string(data, pos, cache)
                value, pos = _read_string(data, pos, cache)
                self._add(name, value)
                headers.append((name, value))
            elif first & 0x20:  # dynamic table size update
                if headers:
                    raise HpackError("table size update not at the start of the block")
                new_size, pos = _read_integer(data, pos, 5)
                if new_size > self.max_allowed_table_size:
                    raise HpackError("table size update above the allowed maximum")
                self.table_size = new_size
                self._evict()
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                index, pos = _read_integer(data, pos, 4)
                if index:
                    name = self._get(index)[0]
                else:
                    name, pos = _read_string(data, pos, cache)
                value, pos = _read_string(data, pos, cache)
                headers.append((name, value))
            size += len(name) + len(value) + 32
            if size > limit:
                raise OversizedHeaderList(f"a header list larger than {limit} bytes")
        if self.table_size > self.max_allowed_table_size:
            # The peer did not shrink its table after we lowered the maximum.
            raise HpackError("the peer's table is above the allowed maximum")
        return headers
