"""Checks of a config against the machine it will run on, without touching the network:
the files it names exist, can be read and parse. `sidecar check-config` reports them with the
schema's problems. `sidecar run` does not refuse to start over them: an endpoint file may
still appear (a ConfigMap mounted late); the file resolver logs why it has no endpoints and
/readyz says so until it does."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sidecar.discovery.file import EndpointFileError, parse_endpoint_file

# Keys whose value is a file to read at run time (certificates and keys of TLS settings).
FILE_KEYS = frozenset({"ca_file", "client_cert", "client_key", "cert_file", "key_file"})


def _files(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(field.path, file name) of every file-valued key in the (raw or dumped) config."""
    if not isinstance(data, Mapping):
        return
    for key, value in data.items():
        here = (*path, str(key))
        if isinstance(value, Mapping):
            yield from _files(value, here)
        elif isinstance(value, str) and value and (key in FILE_KEYS or here == _ENDPOINT_FILE):
            yield ".".join(here), value


_ENDPOINT_FILE = ("discovery", "file", "path")


def file_problems(data: Any, base_dir: Path) -> list[str]:
    """`field.path: reason` for every named file that can't be read (relative names are
    found in `base_dir`, the config file's folder, as at run time)."""
    problems = []
    for where, name in _files(data):
        path = Path(name)
        if not path.is_absolute():
            path = base_dir / path
        try:
            text = path.read_bytes()
        except OSError as exc:
            problems.append(f"{where}: cannot read {path}: {exc.strerror or exc}")
            continue
        if where == ".".join(_ENDPOINT_FILE):
            try:
                parse_endpoint_file(text.decode())
            except (UnicodeDecodeError, EndpointFileError) as exc:
                problems.append(f"{where}: {path}: {exc}")
    return problems
