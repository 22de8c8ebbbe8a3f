"""retrieval-service: the model-serving stand-in (embedding + vector search) that finds
passages relevant to the agent's query. Model servers commonly speak gRPC, and so does this
one: the unary method `/demo.retrieval.v1.Retrieval/Retrieve` ({"query", "user", "k"} →
{"model", "query", "passages"}, JSON-coded: `application/grpc+json`) over HTTP/2 cleartext.
The same port also answers HTTP/1.1: POST /retrieve, GET /retrieve?q=...&user=...&k=...,
/healthz and /faults. Faults apply to gRPC calls too (an injected error is UNAVAILABLE)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from demo_services import common
from demo_services.faults import Faults, grpc_interceptor, health
from demo_services.grpc_wire import Code, GrpcError

NAME = "retrieval-service"
MODEL = "demo-embed-small-v1"
GRPC_SERVICE = "demo.retrieval.v1.Retrieval"
RETRIEVE = f"/{GRPC_SERVICE}/Retrieve"


def retrieve(query: str, user: str, k: int) -> dict[str, object]:
    passages = []
    for rank in range(k):
        h = zlib.crc32(f"{query}|{user}|{rank}".encode())
        passages.append(
            {
                "doc_id": f"{user}-{h % 7}",
                "score": round(0.95 - rank * 0.07 - (h % 100) / 10_000, 4),
                "text": f"Passage {rank + 1} relevant to {query!r}.",
            }
        )
    return {"model": MODEL, "query": query, "passages": passages}


def _bad(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


def _k(raw: object) -> int | None:
    try:
        k = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return k if 1 <= k <= 50 else None


async def retrieve_post(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _bad("body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _bad('body must be {"query": "...", "user": "...", "k": 3}')
    k = _k(body.get("k", 3))
    if k is None:
        return _bad("k must be an integer between 1 and 50")
    return web.json_response(retrieve(body["query"], str(body.get("user", "")), k))


async def retrieve_get(request: web.Request) -> web.Response:
    query = request.query.get("q")
    if not query:
        return _bad("query parameter q is required")
    k = _k(request.query.get("k", "3"))
    if k is None:
        return _bad("k must be an integer between 1 and 50")
    return web.json_response(retrieve(query, request.query.get("user", ""), k))


async def retrieve_grpc(message: Any, metadata: Mapping[str, str]) -> dict[str, object]:
    if not isinstance(message, dict) or not isinstance(message.get("query"), str):
        raise GrpcError(Code.INVALID_ARGUMENT, 'expected {"query": "...", "user": "...", "k": 3}')
    k = _k(message.get("k", 3))
    if k is None:
        raise GrpcError(Code.INVALID_ARGUMENT, "k must be an integer between 1 and 50")
    return retrieve(message["query"], str(message.get("user", "")), k)


def create_app(faults: Faults, env: Mapping[str, str] | None = None) -> web.Application:
    routes = [web.post("/retrieve", retrieve_post), web.get("/retrieve", retrieve_get)]
    app = common.build_app(routes, faults)

    def http(method: str, path: str) -> tuple[int, object]:
        if path.split("?")[0] == "/healthz":
            return health(faults)
        return 404, {"error": "not_found", "message": "over HTTP/2 this port serves gRPC"}

    app[common.GRPC_KEY] = common.GrpcMethods(
        {RETRIEVE: retrieve_grpc}, grpc_interceptor(faults), http
    )
    return app


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(NAME, create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
