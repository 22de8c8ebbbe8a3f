"""What HTTP methods promise (RFC 9110 §9.2)."""

from __future__ import annotations

from typing import Final

# Safe to send twice: retried after a failure, re-sent after a stale pooled connection.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
