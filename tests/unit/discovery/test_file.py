from __future__ import annotations

import pytest

from sidecar.discovery.file import EndpointFileError, parse_endpoint_file


def test_parses_static_shape() -> None:
    table = parse_endpoint_file('user: ["127.0.0.1:8001", "[::1]:8002"]\ndocs: []\n')
    assert [e.address for e in table["user"]] == ["127.0.0.1:8001", "::1:8002"]
    assert table["docs"] == ()
    assert parse_endpoint_file("") == {}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("user: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("user: 127.0.0.1:8001\n", "expected a list"),
        ('user: ["127.0.0.1"]\n', "invalid address"),
        ('user: ["127.0.0.1:99999"]\n', "invalid address"),
        ('"bad name": []\n', "invalid upstream name"),
    ],
)
def test_rejects_bad_files_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(EndpointFileError, match=reason):
        parse_endpoint_file(text)
