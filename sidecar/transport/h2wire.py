"""HTTP/2 wire format (RFC 9113 §4, §6): frame types, flags, error and setting codes, the
frames the sidecar writes as bytes, and the inbound header-field rules (§8.2, §8.3) checked in
one pass. No frame objects: the connection (h2conn.py) parses frames straight from the
received bytes."""

from __future__ import annotations

from typing import Final

from sidecar.transport.hpack_tables import STATIC_TABLE

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (§6)
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (§7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

ERROR_NAMES: Final = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

# Settings (§6.5.2)
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_FRAME_SIZE: Final = 16_384
MAX_FRAME_SIZE_LIMIT: Final = 16_777_215
MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65_535


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, str(code))


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return bytes(
        (
            (length >> 16) & 0xFF,
            (length >> 8) & 0xFF,
            length & 0xFF,
            kind,
            flags,
            (stream_id >> 24) & 0x7F,
            (stream_id >> 16) & 0xFF,
            (stream_id >> 8) & 0xFF,
            stream_id & 0xFF,
        )
    )


def settings_frame(values: list[tuple[int, int]]) -> bytes:
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values)
    return frame_header(len(payload), SETTINGS, 0, 0) + payload


SETTINGS_ACK: Final = frame_header(0, SETTINGS, ACK, 0)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    return frame_header(4, RST_STREAM, 0, stream_id) + code.to_bytes(4, "big")


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    payload = last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug
    return frame_header(len(payload), GOAWAY, 0, 0) + payload


def ping_ack_frame(opaque: bytes) -> bytes:
    return frame_header(8, PING, ACK, 0) + opaque


# --------------------------------------------------------------------- inbound field rules
# Kinds of header block
REQUEST: Final = 0
RESPONSE: Final = 1
TRAILERS: Final = 2

# RFC 9113 §8.2.2
CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_METHOD: Final = 1
_SCHEME: Final = 2
_AUTHORITY: Final = 4
_PATH: Final = 8
_PROTOCOL: Final = 16
_STATUS: Final = 32
_REQUEST_ONLY: Final = _METHOD | _SCHEME | _AUTHORITY | _PATH | _PROTOCOL
_PSEUDO: Final = {
    b":method": _METHOD,
    b":scheme": _SCHEME,
    b":authority": _AUTHORITY,
    b":path": _PATH,
    b":protocol": _PROTOCOL,
    b":status": _STATUS,
}
# §8.2.1: a name is visible ASCII (0x21-0x7e) without upper case; a colon only as the first
# character of a pseudo-header. Deleting the allowed bytes leaves the offending ones.
_NAME_CHARS: Final = bytes(c for c in range(0x21, 0x7F) if not (0x41 <= c <= 0x5A) and c != 0x3A)
# Valid names seen in most blocks (the static table's, without the colon): one set lookup
# instead of a character scan.
_KNOWN_NAMES: Final = frozenset(n[1:] if n[:1] == b":" else n for n, _ in STATIC_TABLE) | frozenset(
    {b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"traceparent"}
)


def check_fields(fields: list[tuple[bytes, bytes]], kind: int) -> str:
    """Why a received header list is malformed (RFC 9113 §8.2, §8.3), or "" when it is not:
    field names and values, connection-specific fields, `te`, pseudo-header fields first, at
    most once and from the set allowed for a request, a response or trailers (none), the
    required ones present, `:path` not empty, `:authority` and `host` agreeing, and a
    three-digit `:status`. The checks h2 applies, in one pass."""
    pseudo = 0
    regular = False
    method = b""
    authority: bytes | None = None
    host: bytes | None = None
    for name, value in fields:
        if not name:
            return "empty field name"
        if name[0] == 0x3A:
            if regular:
                return f"pseudo-header field {name!r} after a regular field"
            bit = _PSEUDO.get(name, 0)
            if bit == 0:
                return f"unknown pseudo-header field {name!r}"
            if pseudo & bit:
                return f"duplicate pseudo-header field {name!r}"
            pseudo |= bit
            if bit == _METHOD:
                method = value
            elif bit == _AUTHORITY:
                authority = value
            elif bit == _PATH:
                if not value and kind == REQUEST:
                    return "empty :path"
            elif bit == _STATUS and (len(value) != 3 or not value.isdigit()):
                return f"invalid :status {value!r}"
            rest = name[1:]
        else:
            regular = True
            rest = name
            if name in CONNECTION_FIELDS:
                return f"connection-specific field {name!r}"
            if name == b"te" and value.lower() != b"trailers":
                return f"te field other than trailers: {value!r}"
            if name == b"host" and kind == REQUEST:
                if host is not None:
                    return "more than one host field"
                host = value
        if rest not in _KNOWN_NAMES and rest.translate(None, _NAME_CHARS):
            return f"invalid character in field name {name!r}"
        if value:
            # (int operands: `b"\r" in value` goes through the buffer protocol, 3x slower)
            if 13 in value or 10 in value or 0 in value:
                return f"CR, LF or NUL in the value of {name!r}"
            first, last = value[0], value[-1]
            if first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09:
                return f"whitespace around the value of {name!r}"
    if kind == TRAILERS:
        return "pseudo-header field in trailers" if pseudo else ""
    if kind == RESPONSE:
        if not pseudo & _STATUS:
            return "response without :status"
        return "request pseudo-header field in a response" if pseudo & _REQUEST_ONLY else ""
    if not pseudo & _METHOD:
        return "request without :method"
    if pseudo & _STATUS:
        return ":status in a request"
    connect = method == b"CONNECT"
    if connect and not pseudo & _PROTOCOL:
        if pseudo & (_SCHEME | _PATH):
            return "CONNECT with :scheme or :path"
    elif (pseudo & (_SCHEME | _PATH)) != _SCHEME | _PATH:
        return "request without :scheme or :path"
    if pseudo & _PROTOCOL and not connect:
        return ":protocol outside CONNECT"
    if authority is None and host is None:
        return "request without :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    return ""
