"""Trace sources over real HTTP on loopback, and the Jaeger JSON parser."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.diagnose import sources
from sidecar.diagnose.analysis import diagnose
from sidecar.diagnose.model import merge_traces, parse_jaeger
from sidecar.diagnose.signals import attempt, is_error
from sidecar.diagnose.sources import parse_traces
from tests.doubles.jaeger import JaegerDouble
from tests.unit.diagnose.builder import ROOT_OP, jaeger_response, rebase, sequential_chain

QUERY = sources.Query("bff", "GET /context", 900.0, 200)


def payload(n: int = 5) -> dict[str, Any]:
    return rebase(jaeger_response(sequential_chain(n)), int(time.time() * 1e6))


def test_parse_accepts_envelope_list_and_single_trace() -> None:
    p = payload(2)
    assert len(parse_jaeger(p)) == 2
    assert len(parse_jaeger(p["data"])) == 2
    [one] = parse_jaeger(p["data"][0])
    assert one.trace_id == p["data"][0]["traceID"]
    span = next(s for s in one.spans if s.kind == "client")
    assert span.service == "bff" and span.tags["sidecar.attempt"] == 1
    assert span.parent_id is not None


def test_parse_skips_malformed_spans_and_rejects_non_traces() -> None:
    p = payload(1)
    p["data"][0]["spans"].append({"spanID": "x"})  # no times
    [t] = parse_jaeger(p)
    assert len(t.spans) == 7
    with pytest.raises(ValueError):
        parse_jaeger({"hello": 1})
    assert parse_jaeger({"data": None}) == []


def test_merge_joins_pieces_of_one_trace() -> None:
    [t] = parse_jaeger(payload(1))
    first, second = t.spans[:3], t.spans[2:]
    [merged] = merge_traces([[type(t)(t.trace_id, first)], [type(t)(t.trace_id, second)]])
    assert {s.span_id for s in merged.spans} == {s.span_id for s in t.spans}


async def test_jaeger_source_resolves_the_exact_operation() -> None:
    async with JaegerDouble(payload(5)["data"]) as jaeger, aiohttp.ClientSession() as session:
        traces = await sources.from_jaeger(session, jaeger.url, QUERY)
    assert len(traces) == 5
    path, query = jaeger.requests[-1]
    assert path == "/api/traces"
    assert query["operation"] == ROOT_OP and query["service"] == "bff"
    assert query["limit"] == "200" and query["lookback"] == "15m"
    assert int(query["end"]) - int(query["start"]) == 900 * 1_000_000


async def test_jaeger_source_errors_are_one_line() -> None:
    async with JaegerDouble([]) as jaeger, aiohttp.ClientSession() as session:
        bad = sources.Query("", None, 60.0, 10)
        with pytest.raises(sources.SourceError, match="HTTP 400: parameter 'service' is required"):
            await sources.from_jaeger(session, jaeger.url, bad)
        url = jaeger.url
    async with aiohttp.ClientSession() as session:  # nothing listens there any more
        with pytest.raises(sources.SourceError, match="cannot reach") as info:
            await sources.from_jaeger(session, url, QUERY)
    assert "\n" not in str(info.value)


async def test_jaeger_url_without_scheme_is_http_and_other_schemes_are_refused() -> None:
    async with JaegerDouble(payload(3)["data"]) as jaeger, aiohttp.ClientSession() as session:
        bare = jaeger.url.removeprefix("http://") + "/"
        assert len(await sources.from_jaeger(session, bare, QUERY)) == 3
        for url in ("ftp://jaeger:16686", "http://", "https://:16686"):
            with pytest.raises(sources.SourceError, match="not an http:// or https:// URL"):
                await sources.from_jaeger(session, url, QUERY)


async def test_admin_sources_are_merged_by_trace_id(unused_port: int) -> None:
    """Each sidecar serves only its own service's spans; together they make whole traces."""
    whole = payload(4)
    seen: list[dict[str, str]] = []

    def only(service: str) -> dict[str, Any]:
        data = []
        for t in whole["data"]:
            pids = {p for p, proc in t["processes"].items() if proc["serviceName"] == service}
            data.append({**t, "spans": [s for s in t["spans"] if s["processID"] in pids]})
        return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.json_response(only(request.match_info["svc"]))

    app = web.Application()
    app.router.add_get("/{svc}/debug/traces", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_port).start()
    base = f"http://127.0.0.1:{unused_port}"
    try:
        async with aiohttp.ClientSession() as session:
            traces = await sources.from_admins(
                session, [f"{base}/bff", f"{base}/document-service/debug/traces"], QUERY
            )
    finally:
        await runner.cleanup()
    assert len(traces) == 4
    services = {s.service for t in traces for s in t.spans}
    assert services == {"bff", "document-service"}
    assert all("service" not in q for q in seen) and seen[0]["lookback"] == "15m"


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(payload(1)["data"][0]))  # what Jaeger UI's "Download" gives
    assert len(sources.read_file(path)) == 1
    with pytest.raises(sources.SourceError, match="cannot read"):
        sources.read_file(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(sources.SourceError, match=r"trace\.json"):
        sources.read_file(path)


def otlp_request(spans: list[dict[str, Any]], service: str = "bff") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            }
        ]
    }


def test_otlp_json_as_the_spec_encodes_it() -> None:
    """Hex ids, int64 as decimal strings, enum integers, status codes."""
    trace_id = "5b8efff798038103d269b633813fc60c"
    spans: list[dict[str, Any]] = [
        {
            "traceId": trace_id,
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "",
            "name": "GET /context/{user_id}",
            "kind": 2,
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "attributes": [
                {"key": "http.response.status_code", "value": {"intValue": "503"}},
                {"key": "http.request.resend_count", "value": {"intValue": "2"}},
                {"key": "sampled", "value": {"boolValue": True}},
                {"key": "ratio", "value": {"doubleValue": 0.5}},
                {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
            ],
            "status": {"code": 2, "message": "boom"},
        },
        {
            "traceId": trace_id,
            "spanId": "00f067aa0ba902b7",
            "parentSpanId": "eee19b7ec3c1b174",
            "name": "GET",
            "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": 1544712660100000000,
            "endTimeUnixNano": 1544712660300000000,
        },
        {"traceId": trace_id, "spanId": "not-an-id", "name": "broken"},
    ]
    [trace] = parse_traces(otlp_request(spans))
    root, client = trace.spans
    assert trace.trace_id == trace_id
    assert (root.span_id, root.parent_id, root.kind) == ("eee19b7ec3c1b174", None, "server")
    assert (root.start_us, root.duration_us) == (1544712660000000, 1_000_000)
    assert root.tags["http.response.status_code"] == 503 and root.tags["sampled"] is True
    assert root.tags["otel.status_code"] == "ERROR" and attempt(root) == 3
    assert is_error(root)
    # leading zeros are dropped from span ids, as for Jaeger ids
    assert (client.span_id, client.parent_id, client.kind) == (
        "f067aa0ba902b7",
        "eee19b7ec3c1b174",
        "client",
    )
    assert client.duration_us == 200_000


def test_otlp_base64_ids_and_snake_case_from_generic_protobuf_json() -> None:
    trace_id, span_id = bytes(range(1, 17)), bytes(range(1, 9))
    span = {
        "trace_id": base64.b64encode(trace_id).decode(),
        "span_id": base64.b64encode(span_id).decode(),
        "name": "x",
        "kind": 1,
        "start_time_unix_nano": "1000",
        "end_time_unix_nano": "3000",
    }
    payload = {
        "resource_spans": [{"resource": {"attributes": []}, "scope_spans": [{"spans": [span]}]}]
    }
    [trace] = parse_traces(payload)
    assert trace.trace_id == trace_id.hex()
    assert trace.spans[0].span_id == span_id.hex().lstrip("0")
    assert trace.spans[0].service == "unknown" and trace.spans[0].duration_us == 2


def test_otlp_json_lines_file_joins_one_trace_from_several_requests(tmp_path: Path) -> None:
    """A collector's file exporter writes one export request per line; a trace's spans are
    spread over the services' (and batches') lines."""
    tid = "0af7651916cd43dd8448eb211c80319c"
    root = {
        "traceId": tid,
        "spanId": "b7ad6b7169203331",
        "name": "GET /context",
        "kind": 2,
        "startTimeUnixNano": "1000000000",
        "endTimeUnixNano": "1050000000",
    }
    child = {
        "traceId": tid,
        "spanId": "a7ad6b7169203331",
        "parentSpanId": "b7ad6b7169203331",
        "name": "GET /users/{id}",
        "kind": 2,
        "startTimeUnixNano": "1010000000",
        "endTimeUnixNano": "1030000000",
    }
    path = tmp_path / "traces.jsonl"
    path.write_text(
        json.dumps(otlp_request([root]))
        + "\n"
        + json.dumps(otlp_request([child], "user-service"))
        + "\n"
    )
    [trace] = sources.read_file(path)
    assert sorted(s.service for s in trace.spans) == ["bff", "user-service"]
    d = diagnose([trace], "bff", None)
    assert [h.name for h in d.hops] == ["user-service GET /users/{id}"]
