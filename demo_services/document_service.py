"""document-service: the user's documents an agent may cite.
GET /documents?user={id} (summaries) and GET /documents/{id} (one document)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence

from aiohttp import web

from demo_services import common
from demo_services.faults import Faults

NAME = "document-service"
_TITLES = (
    "Quarterly report",
    "Onboarding checklist",
    "Incident review: cache stampede",
    "API style guide",
    "Roadmap draft",
    "Meeting notes",
)


def document(doc_id: str) -> dict[str, object]:
    h = zlib.crc32(doc_id.encode())
    title = _TITLES[h % len(_TITLES)]
    return {
        "id": doc_id,
        "title": title,
        "updated_at": f"2024-{1 + h % 12:02d}-{1 + h % 28:02d}T10:00:00Z",
        "size_bytes": 2_000 + h % 50_000,
        "excerpt": f"{title}: the first paragraph of document {doc_id}.",
    }


def documents_of(user_id: str, limit: int = 3) -> list[dict[str, object]]:
    return [document(f"{user_id}-{n}") for n in range(limit)]


async def list_documents(request: web.Request) -> web.Response:
    user = request.query.get("user")
    if not user:
        return web.json_response(
            {"error": "bad_request", "message": "query parameter user is required"}, status=400
        )
    try:
        limit = max(0, min(20, int(request.query.get("limit", "3"))))
    except ValueError:
        return web.json_response(
            {"error": "bad_request", "message": "limit must be an integer"}, status=400
        )
    return web.json_response({"user": user, "documents": documents_of(user, limit)})


async def get_document(request: web.Request) -> web.Response:
    return web.json_response(document(request.match_info["id"]))


def create_app(faults: Faults, env: Mapping[str, str] | None = None) -> web.Application:
    routes = [web.get("/documents", list_documents), web.get("/documents/{id}", get_document)]
    return common.build_app(routes, faults)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(NAME, create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
