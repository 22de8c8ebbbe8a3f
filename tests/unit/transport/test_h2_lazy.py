"""The HTTP/2 stack (our codec, server and client) is loaded by the first HTTP/2 connection
or upstream call, not by a sidecar whose traffic is all HTTP/1.1; and the libraries the
sidecar once used for it (h2, hpack, hyperframe: ~4.5 MiB) are not loaded at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(out.split())


BUILD = """
    import sys
    from sidecar.app import Sidecar
    from sidecar.config import build_config
    config = build_config(
        {"service": {"name": "bff"}, "tracing": {"exporter": "none"},
         "discovery": {"static": {"user-service": ["127.0.0.1:8001"]}}},
        env={},
    )
    sidecar = Sidecar(config)
"""
LOADED = """
    print(*sorted(m for m in sys.modules if m.split(".")[0] in ("h2", "hpack", "hyperframe")))
    stack = ("sidecar.transport.h2_server", "sidecar.transport.h2_client", "sidecar.transport.h2c")
    print(*sorted(m for m in sys.modules if m.startswith((*stack, "sidecar.transport.hpack"))))
"""


def test_an_http1_sidecar_does_not_import_the_http2_stack() -> None:
    assert _modules_after(BUILD + LOADED) == set()


def test_the_first_http2_use_loads_it() -> None:
    loaded = _modules_after(BUILD + "    sidecar.h2_client.get()\n" + LOADED)
    assert "sidecar.transport.h2conn" in loaded and "sidecar.transport.h2_client" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("h2", "hpack", "hyperframe")}
