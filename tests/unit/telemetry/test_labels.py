from __future__ import annotations

import pytest

from sidecar.telemetry.labels import BoundedValues, RouteMatcher, method_label, status_label


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/users/42", "/users/{id}"),
        ("/users/42?x=1", "/users/{id}"),
        ("/users/me", "/users/me"),  # a literal segment beats a parameter
        ("/users/42/docs/7", "/users/{id}/docs/{doc}"),
        ("/files/report.json", "/files/{name}.json"),
        ("/files/report.txt", "other"),
        ("/users", "other"),
        ("/users/", "other"),
        ("/users/42/extra", "other"),
        ("/", "/"),
        ("/nowhere", "other"),
    ],
)
def test_route_templates(path: str, route: str) -> None:
    m = RouteMatcher(
        ["/users/{id}", "/users/me", "/users/{id}/docs/{doc}", "/files/{name}.json", "/"]
    )
    assert m.match(path) == route


def test_backtracks_from_literal_to_parameter() -> None:
    m = RouteMatcher(["/a/b/c", "/a/{x}/d"])
    assert m.match("/a/b/d") == "/a/{x}/d"
    assert m.match("/a/b/c") == "/a/b/c"


def test_no_templates_is_always_other() -> None:
    assert RouteMatcher([]).match("/users/1") == "other"


def test_methods() -> None:
    assert method_label("GET") == "GET"
    assert method_label("PATCH") == "PATCH"
    assert method_label("get") == "_OTHER"
    assert method_label("PROPFIND") == "_OTHER"


def test_status_labels() -> None:
    assert status_label(200) == "200"
    assert status_label(999) == "other"


def test_bounded_values() -> None:
    b = BoundedValues(2)
    assert [b.get(x) for x in "abcab"] == ["a", "b", "other", "a", "b"]
