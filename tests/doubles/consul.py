"""A wire-level double of the Consul agent HTTP API (the parts the sidecar uses).

Speaks the real wire format over a real socket: blocking queries on a single global Raft-like
index (`X-Consul-Index`, `wait` + up to wait/16 jitter, a return is not a change), the health
endpoint's JSON shape, agent register/deregister/maintenance with case-insensitive keys, and
ACL checks answering 403 "ACL not found" / "Permission denied" like the agent.

Test control: `set_instances`, `set_status`, `fail_with`, `set_immediate`, `reset_index`,
`stop`/`restart` (same port), and `requests` (every request in arrival order).

Modelled on Consul 1.x (`agent/health_endpoint.go`, `agent/agent_endpoint.go`,
`agent/consul/state/catalog.go`). Simplifications, on purpose: the index is global (modern
Consul tracks a per-service index for existing services; global is the stricter case for
clients since unrelated changes wake every watcher); HTTP checks are not executed, their status
is set by the test (new checks start `critical`, as in Consul); `filter` supports only
`"x" in Service.Tags`, `Service.Meta.k == "v"`, `Service.ID == "v"` joined by `and`."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

NODE = "node1"
DATACENTER = "dc1"
_TRUE = {"1", "t", "T", "TRUE", "true", "True", ""}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Instance:
    """One service instance in the catalog (registered through the agent or by the test)."""

    service: str
    id: str
    port: int
    address: str = ""  # empty: callers use Node.Address, as in Consul
    node: str = NODE
    node_address: str = "127.0.0.1"
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    # check id → {"Status", "Name", "Notes", "Definition"...}
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    registration: dict[str, Any] | None = None  # normalised register body (agent services)

    def status(self) -> str:
        statuses = [c["Status"] for c in self.checks.values()]
        for s in ("critical", "warning"):
            if s in statuses:
                return s
        return "passing"


def _parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


_DUR = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_go_duration(text: str) -> float:
    m = _DUR.match(text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def _normalise_keys(value: Any) -> Any:
    """Consul decodes JSON keys case-insensitively and accepts snake_case aliases; compare on
    lower-case keys without underscores. Meta values keep their keys as written."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = k.lower().replace("_", "")
            out[key] = dict(v) if key == "meta" and isinstance(v, dict) else _normalise_keys(v)
        return out
    if isinstance(value, list):
        return [_normalise_keys(v) for v in value]
    return value


class ConsulDouble:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        acl_tokens: Mapping[str, str] | None = None,
        jitter: bool = True,
    ) -> None:
        """`acl_tokens`: token → "read" | "write"; None disables ACLs (every request allowed)."""
        self.host = host
        self.port = port
        self.acl_tokens = dict(acl_tokens) if acl_tokens is not None else None
        self.jitter = jitter
        self.requests: list[RecordedRequest] = []
        self.index = 1
        self.instances: dict[str, Instance] = {}  # by service ID
        self.failing: int | None = None
        self.immediate = False
        # The catalog listing answers as ACL-filtered (empty, with the header) while health
        # reads work: a token with service:read on some services but not the listing.
        self.catalog_filtered = False
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ConsulDouble:
        app = web.Application()
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        app.router.add_put("/v1/agent/service/register", self._register)
        app.router.add_put("/v1/agent/service/deregister/{id}", self._deregister)
        app.router.add_put("/v1/agent/service/maintenance/{id}", self._maintenance)
        app.router.add_get("/v1/agent/services", self._agent_services)
        app.router.add_get("/v1/catalog/services", self._catalog_services)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        # SO_REUSEADDR so restart() can take the same port back at once.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)  # type: ignore[assignment]
        await self._site.start()
        return self

    async def stop(self) -> None:
        """Close the listener and all connections: clients see refused/reset, like a dead agent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> ConsulDouble:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ test control

    async def _bump(self) -> None:
        self.index += 1
        async with self._changed:
            self._changed.notify_all()

    async def set_instances(self, service: str, instances: list[Instance]) -> None:
        """Replace the catalog entries of `service` with `instances`."""
        for sid in [i for i, inst in self.instances.items() if inst.service == service]:
            del self.instances[sid]
        for inst in instances:
            if not inst.checks:
                inst.checks = {f"service:{inst.id}": {"Status": "passing", "Name": "check"}}
            self.instances[inst.id] = inst
        await self._bump()

    async def set_status(self, service_id: str, status: str) -> None:
        """Set every check of an instance to passing | warning | critical."""
        for check in self.instances[service_id].checks.values():
            check["Status"] = status
        await self._bump()

    async def touch(self) -> None:
        """Move the index without changing anything visible (another service's churn)."""
        await self._bump()

    async def reset_index(self, value: int) -> None:
        """The index goes backwards (snapshot restore, new cluster)."""
        self.index = value
        async with self._changed:
            self._changed.notify_all()

    def fail_with(self, status: int | None) -> None:
        """Answer every request with this status (None: behave)."""
        self.failing = status

    def set_immediate(self, on: bool) -> None:
        """Blocking queries return at once with the same index (a misbehaving server)."""
        self.immediate = on

    def health_requests(self, service: str | None = None) -> list[RecordedRequest]:
        prefix = "/v1/health/service/" + (service or "")
        return [r for r in self.requests if r.path.startswith(prefix)]

    # ------------------------------------------------------------------ plumbing

    async def _record(self, request: web.Request) -> RecordedRequest:
        body: Any = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        rec = RecordedRequest(
            request.method, request.path, dict(request.query), dict(request.headers), body
        )
        self.requests.append(rec)
        return rec

    def _token(self, request: web.Request) -> str:
        return request.headers.get("X-Consul-Token") or request.query.get("token", "")

    def _acl(self, request: web.Request, need: str) -> web.Response | str | None:
        """None: allowed; "filtered": anonymous read (results filtered away); else a 403."""
        if self.acl_tokens is None:
            return None
        token = self._token(request)
        if not token:
            if need == "read":
                return "filtered"
            return web.Response(status=403, text="Permission denied")
        rights = self.acl_tokens.get(token)
        if rights is None:
            return web.Response(status=403, text="ACL not found")
        if need == "write" and rights != "write":
            return web.Response(status=403, text="Permission denied")
        return None

    def _failure(self) -> web.Response | None:
        if self.failing is not None:
            return web.Response(status=self.failing, text="rpc error: No cluster leader")
        return None

    def _meta_headers(self) -> dict[str, str]:
        return {
            "X-Consul-Index": str(max(self.index, 1)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }

    async def _block(self, request: web.Request) -> web.Response | None:
        """Blocking-query semantics: with index > 0, wait until the global index moves past
        it or `wait` (+ up to wait/16 jitter) passes. Returns an error reply or None."""
        q = request.query
        if "index" not in q or self.immediate:
            return None
        try:
            min_index = int(q["index"])
        except ValueError:
            return web.Response(status=400, text=f"Invalid index: {q['index']!r}")
        wait = 300.0
        if "wait" in q:
            try:
                wait = _parse_go_duration(q["wait"])
            except ValueError:
                return web.Response(status=400, text=f"Invalid wait time: {q['wait']!r}")
        if wait <= 0:
            wait = 300.0
        wait = min(wait, 600.0)
        if self.jitter:
            wait += random.uniform(0, wait / 16)
        if min_index <= 0:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with self._changed:
            while self.index <= min_index and self.failing is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
        return None

    # ------------------------------------------------------------------ endpoints

    async def _health_service(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        acl = self._acl(request, "read")
        if isinstance(acl, web.Response):
            return acl
        q = request.query
        if (dc := q.get("dc")) and dc != DATACENTER:
            return web.Response(status=500, text="No path to datacenter")
        passing = False
        if "passing" in q:
            try:
                passing = _parse_bool(q["passing"])
            except ValueError:
                return web.Response(
                    status=400, text=f"Invalid value for ?passing: {q['passing']!r}"
                )
        try:
            matcher = _compile_filter(q.get("filter", ""))
        except ValueError as exc:
            return web.Response(
                status=400, text=f"Failed to create boolean expression evaluator: {exc}"
            )
        if (err := await self._block(request)) is not None:
            return err
        if (fail := self._failure()) is not None:
            return fail
        name = request.match_info["name"]
        headers = self._meta_headers()
        if acl == "filtered":
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
            return web.json_response([], headers=headers)
        out = []
        for inst in sorted(self.instances.values(), key=lambda i: (i.node, i.id)):
            if inst.service != name:
                continue
            if passing and inst.status() != "passing":
                continue
            entry = _health_entry(inst)
            if matcher(entry):
                out.append(entry)
        return web.json_response(out, headers=headers)

    async def _register(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        if isinstance(acl := self._acl(request, "write"), web.Response):
            return acl
        if not isinstance(rec.body, dict):
            return web.Response(status=400, text="Request decode failed: invalid JSON")
        body = _normalise_keys(rec.body)
        name = body.get("name")
        if not name:
            return web.Response(status=400, text="Missing service name")
        sid = body.get("id") or name
        checks_in = list(body.get("checks") or [])
        if body.get("check"):
            checks_in.insert(0, body["check"])
        checks: dict[str, dict[str, Any]] = {}
        for n, chk in enumerate(checks_in, start=1):
            if chk.get("http") and not chk.get("interval"):
                return web.Response(
                    status=400,
                    text="Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks",
                )
            if (d := chk.get("deregistercriticalserviceafter")) is not None:
                try:
                    _parse_go_duration(d) if isinstance(d, str) else float(d)
                except ValueError:
                    return web.Response(
                        status=400, text=f"Invalid DeregisterCriticalServiceAfter {d!r}"
                    )
            cid = (
                chk.get("checkid")
                or chk.get("id")
                or (f"service:{sid}" if len(checks_in) == 1 else f"service:{sid}:{n}")
            )
            checks[cid] = {
                "Status": chk.get("status") or "critical",
                "Name": chk.get("name") or f"Service '{name}' check",
                "Definition": chk,
            }
        replace = False
        if "replace-existing-checks" in request.query:
            try:
                replace = _parse_bool(request.query["replace-existing-checks"])
            except ValueError:
                return web.Response(status=400, text="Invalid value for replace-existing-checks")
        previous = self.instances.get(sid)
        if previous is not None and not replace:
            checks = {
                **previous.checks,
                **{k: {**previous.checks.get(k, {}), **v} for k, v in checks.items()},
            }
        elif previous is not None:
            # keep the status of checks that are re-registered (Consul keeps state for same ids)
            for cid, c in checks.items():
                if cid in previous.checks and "status" not in (c["Definition"] or {}):
                    c["Status"] = previous.checks[cid]["Status"]
        weights = body.get("weights") or {"passing": 1, "warning": 1}
        self.instances[sid] = Instance(
            service=name,
            id=sid,
            port=int(body.get("port") or 0),
            address=body.get("address") or "",
            tags=list(body.get("tags") or []),
            meta=dict(body.get("meta") or {}),
            weights={
                "Passing": int(weights.get("passing", 1)),
                "Warning": int(weights.get("warning", 1)),
            },
            checks=checks,
            registration=body,
        )
        await self._bump()
        return web.Response(status=200)

    async def _deregister(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        if isinstance(acl := self._acl(request, "write"), web.Response):
            return acl
        sid = request.match_info["id"]
        if sid not in self.instances or self.instances[sid].registration is None:
            return web.Response(
                status=404,
                text=f'Unknown service ID "{sid}". '
                "Ensure that the service ID is passed, not the service name.",
            )
        del self.instances[sid]
        await self._bump()
        return web.Response(status=200)

    async def _maintenance(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        if isinstance(acl := self._acl(request, "write"), web.Response):
            return acl
        sid = request.match_info["id"]
        if "enable" not in request.query:
            return web.Response(status=400, text="Missing value for enable")
        try:
            enable = _parse_bool(request.query["enable"])
        except ValueError:
            return web.Response(status=400, text="Invalid value for enable")
        inst = self.instances.get(sid)
        if inst is None or inst.registration is None:
            return web.Response(status=404, text=f'Unknown service ID "{sid}"')
        cid = f"_service_maintenance:{sid}"
        if enable:
            reason = request.query.get("reason") or (
                "Maintenance mode is enabled for this service, but no reason was provided. "
                "This is a default message."
            )
            inst.checks[cid] = {
                "Status": "critical",
                "Name": "Service Maintenance Mode",
                "Notes": reason,
            }
        else:
            inst.checks.pop(cid, None)
        await self._bump()
        return web.Response(status=200)

    async def _agent_services(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        acl = self._acl(request, "read")
        if isinstance(acl, web.Response):
            return acl
        out: dict[str, Any] = {}
        if acl != "filtered":
            for inst in self.instances.values():
                if inst.registration is None:
                    continue
                out[inst.id] = {
                    "ID": inst.id,
                    "Service": inst.service,
                    "Tags": inst.tags,
                    "Meta": inst.meta,
                    "Port": inst.port,
                    "Address": inst.address,
                    "Weights": inst.weights,
                    "EnableTagOverride": False,
                    "Datacenter": DATACENTER,
                }
        return web.json_response(out)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (fail := self._failure()) is not None:
            return fail
        acl = self._acl(request, "read")
        if isinstance(acl, web.Response):
            return acl
        if (err := await self._block(request)) is not None:
            return err
        headers = self._meta_headers()
        out: dict[str, list[str]] = {"consul": []}
        if acl == "filtered" or self.catalog_filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
            out = {}
        else:
            for inst in self.instances.values():
                tags = out.setdefault(inst.service, [])
                tags.extend(t for t in inst.tags if t not in tags)
        return web.json_response(out, headers=headers)


def _health_entry(inst: Instance) -> dict[str, Any]:
    node_check = {
        "Node": inst.node,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }
    checks = [node_check] + [
        {
            "Node": inst.node,
            "CheckID": cid,
            "Name": c.get("Name", ""),
            "Status": c["Status"],
            "Notes": c.get("Notes", ""),
            "Output": "",
            "ServiceID": inst.id,
            "ServiceName": inst.service,
            "ServiceTags": inst.tags,
            "Type": "http" if (c.get("Definition") or {}).get("http") else "",
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }
        for cid, c in inst.checks.items()
    ]
    return {
        "Node": {
            "ID": "",
            "Node": inst.node,
            "Address": inst.node_address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": inst.node_address, "wan": inst.node_address},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        },
        "Service": {
            "Kind": "",
            "ID": inst.id,
            "Service": inst.service,
            "Tags": inst.tags,
            "Address": inst.address,
            "Meta": inst.meta,
            "Port": inst.port,
            "Weights": inst.weights,
            "EnableTagOverride": False,
            "Datacenter": DATACENTER,
            "CreateIndex": 1,
            "ModifyIndex": 1,
        },
        "Checks": checks,
    }


_CLAUSE_TAG = re.compile(r'^"([^"]*)"\s+in\s+Service\.Tags$')
_CLAUSE_EQ = re.compile(r'^Service\.(ID|Service|Address|Meta\.[\w.-]+)\s*==\s*"([^"]*)"$')


def _compile_filter(expr: str) -> Any:
    if not expr.strip():
        return lambda entry: True
    tests = []
    for clause in re.split(r"\s+and\s+", expr.strip()):
        clause = clause.strip()
        if m := _CLAUSE_TAG.match(clause):
            tag = m.group(1)
            tests.append(lambda e, tag=tag: tag in e["Service"]["Tags"])
        elif m := _CLAUSE_EQ.match(clause):
            path, value = m.group(1), m.group(2)

            def test(e: dict[str, Any], path: str = path, value: str = value) -> bool:
                cur: Any = e["Service"]
                for part in path.split(".", 1) if path.startswith("Meta.") else [path]:
                    cur = cur.get(part) if isinstance(cur, dict) else None
                return bool(cur == value)

            tests.append(test)
        else:
            raise ValueError(f"unsupported filter clause {clause!r} (double supports a subset)")
    return lambda entry: all(t(entry) for t in tests)
