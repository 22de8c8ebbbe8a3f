"""The three leaf services answer realistic JSON over real sockets."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from demo_services import document_service, retrieval_service, user_service
from demo_services.faults import Faults


@pytest.fixture
async def serve():
    clients: list[TestClient] = []

    async def make(module) -> TestClient:
        client = TestClient(TestServer(module.create_app(Faults()), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


async def test_user_service_profile_is_stable_per_id(serve):
    client = await serve(user_service)
    a = await (await client.get("/users/u-17")).json()
    b = await (await client.get("/users/u-17")).json()
    assert a == b
    assert a["id"] == "u-17" and {"name", "tier", "locale", "preferences"} <= set(a)


async def test_document_service_lists_and_gets(serve):
    client = await serve(document_service)
    listing = await (await client.get("/documents", params={"user": "7", "limit": "2"})).json()
    assert listing["user"] == "7" and len(listing["documents"]) == 2
    doc_id = listing["documents"][0]["id"]
    one = await (await client.get(f"/documents/{doc_id}")).json()
    assert one == listing["documents"][0]
    assert (await client.get("/documents")).status == 400
    assert (await client.get("/documents", params={"user": "7", "limit": "x"})).status == 400


async def test_retrieval_service_post_and_get(serve):
    client = await serve(retrieval_service)
    post = await client.post("/retrieve", json={"query": "refunds", "user": "7", "k": 4})
    body = await post.json()
    assert post.status == 200 and len(body["passages"]) == 4 and body["model"]
    scores = [p["score"] for p in body["passages"]]
    assert scores == sorted(scores, reverse=True)
    get = await (
        await client.get("/retrieve", params={"q": "refunds", "user": "7", "k": "4"})
    ).json()
    assert get == body
    assert (await client.post("/retrieve", json={"k": 2})).status == 400
    assert (await client.post("/retrieve", json={"query": "x", "k": 0})).status == 400
    assert (await client.get("/retrieve")).status == 400
