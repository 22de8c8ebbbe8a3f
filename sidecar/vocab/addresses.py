"""Host and address helpers shared by config validation, routing and TLS origination."""

from __future__ import annotations

import ipaddress


def is_literal_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (brackets allowed), as opposed to a name to resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
