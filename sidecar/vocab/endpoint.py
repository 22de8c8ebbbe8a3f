"""An upstream endpoint: where a request goes, as discovery publishes it and balancers pick
it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    weight: int = 1
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    tls: bool = False  # written as https://host:port: the sidecar speaks TLS to it
    # Computed once: the connection pool hashes the endpoint on every request, and the
    # `__hash__` dataclass would generate builds and hashes a tuple in interpreted code.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (self.host, self.port, self.weight, self.tags, self.tls)
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address


_DEFAULT_PORTS = {"https": 443, "http": 80}


def parse_endpoint_address(text: str) -> Endpoint:
    """An endpoint as written in static/file discovery: `host:port`, `[v6]:port`, or
    `https://host[:port]` (TLS to that endpoint, port 443 unless given). ValueError with the
    reason for anything else, e.g. a path or another scheme."""
    rest, tls = text.strip(), False
    scheme, sep, after = rest.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"invalid address {text!r}: scheme {scheme}:// is not supported, "
                "write host:port or https://host:port"
            )
        tls, rest = scheme == "https", after.removesuffix("/")
        if any(c in rest for c in "/?#@"):
            raise ValueError(
                f"invalid address {text!r}: an endpoint is host:port or https://host:port, "
                "without a path, query or user"
            )
    if rest.startswith("["):
        end = rest.find("]")
        host, port_text = rest[1:end], rest[end + 1 :] if end > 0 else ""
        if end < 0 or (port_text and not port_text.startswith(":")):
            raise ValueError(f"invalid address {text!r}: malformed IPv6 literal")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            host, port_text = rest, ""
    if not port_text and sep:
        port_text = str(_DEFAULT_PORTS[scheme])
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            f"invalid address {text!r}: expected host:port (port 1-65535) or https://host:port"
        )
    return Endpoint(host=host, port=int(port_text), tls=tls)
