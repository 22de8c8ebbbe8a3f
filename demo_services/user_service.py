"""user-service: the profile an agent needs to personalise its answer. GET /users/{id}."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping, Sequence

from aiohttp import web

from demo_services import common
from demo_services.faults import Faults

NAME = "user-service"
_NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia")
_TIERS = ("free", "pro", "enterprise")
_LOCALES = ("en-GB", "de-DE", "fr-FR", "ja-JP")


def user_profile(user_id: str) -> dict[str, object]:
    h = zlib.crc32(user_id.encode())
    return {
        "id": user_id,
        "name": _NAMES[h % len(_NAMES)],
        "tier": _TIERS[h % len(_TIERS)],
        "locale": _LOCALES[h % len(_LOCALES)],
        "preferences": {"answer_style": "concise" if h % 2 else "detailed", "citations": True},
    }


async def get_user(request: web.Request) -> web.Response:
    return web.json_response(user_profile(request.match_info["id"]))


def create_app(faults: Faults, env: Mapping[str, str] | None = None) -> web.Application:
    return common.build_app([web.get("/users/{id}", get_user)], faults)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(NAME, create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
