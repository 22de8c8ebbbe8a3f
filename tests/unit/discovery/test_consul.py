from __future__ import annotations

from typing import Any

from sidecar.discovery.consul import endpoint_from_entry, endpoints_from_body


def entry(service_address: str = "", port: int = 8080, **service: Any) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "10.1.1.1", "Datacenter": "dc1"},
        "Service": {
            "ID": "x",
            "Service": "x",
            "Address": service_address,
            "Port": port,
            "Tags": service.get("Tags"),
            "Meta": service.get("Meta"),
            "Weights": service.get("Weights", {"Passing": 3, "Warning": 1}),
        },
        "Checks": [],
    }


def test_service_address_wins_and_falls_back_to_node() -> None:
    a = endpoint_from_entry(entry("10.2.2.2"))
    b = endpoint_from_entry(entry(""))
    assert a is not None and a.host == "10.2.2.2"
    assert b is not None and b.host == "10.1.1.1" and b.port == 8080


def test_weights_tags_meta_kept() -> None:
    ep = endpoint_from_entry(entry(Tags=["a", "b"], Meta={"k": "v"}))
    assert ep is not None
    assert (ep.weight, ep.tags, ep.meta) == (3, ("a", "b"), {"k": "v"})


def test_malformed_entries_are_skipped_and_order_is_stable() -> None:
    body = [entry("10.0.0.9", 9), {"Service": None}, entry("10.0.0.1", 1), entry(port=0)]
    assert [e.address for e in endpoints_from_body(body)] == ["10.0.0.1:1", "10.0.0.9:9"]
    assert endpoints_from_body({"not": "a list"}) == ()
