"""retrieval-service: the model-serving stand-in (embedding + vector search) that finds
passages relevant to the agent's query. POST /retrieve {"query", "user", "k"} or
GET /retrieve?q=...&user=...&k=..."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence

from aiohttp import web

from demo_services import common
from demo_services.faults import Faults

NAME = "retrieval-service"
MODEL = "demo-embed-small-v1"


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


def create_app(faults: Faults, env: Mapping[str, str] | None = None) -> web.Application:
    routes = [web.post("/retrieve", retrieve_post), web.get("/retrieve", retrieve_get)]
    return common.build_app(routes, faults)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(NAME, create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
