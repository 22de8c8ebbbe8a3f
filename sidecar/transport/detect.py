"""Protocol detection on a listener's first bytes (as Linkerd's does): an HTTP/2 client with
prior knowledge opens with a fixed 24-byte preface (RFC 9113 §3.4); anything else is HTTP/1.x.

"PRI" is no HTTP/1.1 method anyone sends, so three bytes decide; the HTTP/2 protocol then
checks the whole preface itself."""

from __future__ import annotations

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_h2_preface(first: bytes) -> bool:
    """Whether a connection's first received bytes start the HTTP/2 preface."""
    return len(first) >= 3 and H2_PREFACE.startswith(first[:24])
