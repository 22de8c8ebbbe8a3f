"""`Headers.set` and `Headers.replace`: the result is the same whether the field was there
(the list is rebuilt) or not (appended in place)."""

from sidecar.http import Headers


def test_set_appends_an_absent_field_and_replaces_every_present_one() -> None:
    h = Headers.from_lower([("host", "a"), ("x-b", "1"), ("x-b", "2"), ("accept", "*/*")])
    h.set("X-New", "n")
    assert h.items() == [
        ("host", "a"),
        ("x-b", "1"),
        ("x-b", "2"),
        ("accept", "*/*"),
        ("x-new", "n"),
    ]
    h.set("x-b", "3")
    assert h.items() == [("host", "a"), ("accept", "*/*"), ("x-new", "n"), ("x-b", "3")]


def test_replace_drops_the_named_fields_then_appends() -> None:
    h = Headers.from_lower([("host", "a"), ("traceparent", "old"), ("accept", "*/*")])
    h.replace(frozenset({"traceparent", "tracestate"}), [("traceparent", "new")])
    assert h.items() == [("host", "a"), ("accept", "*/*"), ("traceparent", "new")]
    h2 = Headers.from_lower([("host", "a")])
    h2.replace(frozenset({"traceparent"}), [("traceparent", "t"), ("x-b3-traceid", "b")])
    assert h2.items() == [("host", "a"), ("traceparent", "t"), ("x-b3-traceid", "b")]
