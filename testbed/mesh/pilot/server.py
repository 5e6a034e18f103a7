"""Pilot: serves per-sidecar xDS over REST-JSON (Envoy v3) with long-poll push.

POST /v3/discovery:{listeners,routes,clusters,endpoints} with a DiscoveryRequest.
A request whose version_info already names the current content is held until the
content changes or `hold_s` passes (then 304 Not Modified, which Envoy's REST
subscription accepts as "nothing new"). Every subscription (node, type, resource
names) has its own version and nonce: the next request carrying the pushed version is
an ACK; one carrying error_detail, or (Envoy's REST client sends neither nonce nor
error_detail) still its old version, is a NACK. NACKed content is never re-sent to that
node (it keeps its last good config) until the config changes. Route pushes wait until
the node has the clusters they need (make-before-break, at most `gate_s`).

Events (JSON lines to a file and/or a callback): config, apply_rejected, push, ack, nack.
`apply()` runs Galley first; a rejected apply changes nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

from aiohttp import web

from testbed.mesh.rules.galley import analyze
from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.rules.yamldoc import Y, document_identity, load_documents, read_documents
from testbed.mesh.model import ERROR, Endpoint, MeshState, Message, ServiceSpec
from testbed.mesh.pilot.resources import CLUSTER, ENDPOINT, ROUTE, TYPE_BY_PATH, NodeInfo, XdsSource, build

log = logging.getLogger("minimesh.pilot")
SHORT_TYPE = {v: k for k, v in TYPE_BY_PATH.items()}
DEFAULT_SOURCE = XdsSource()        # frozen: one shared default is safe


class ApplyRejected(Exception):
    """Galley found errors; `messages` holds all of them. Nothing was changed."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        super().__init__("apply rejected:\n" + "\n".join(m.format() for m in messages))


@dataclass
class SidecarWatch:
    """One xDS watch Pilot serves: a sidecar's (node, type, resource names), with what Pilot
    last pushed on it and what the sidecar ACKed or NACKed. (The sidecar's own side of
    the same subscription is ``proxy.xds.protocol.Subscription``.)"""

    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    nacked_version: str = ""
    nack_error: str = ""
    pushes: int = 0


@dataclass
class NodeState:
    node: NodeInfo
    subs: dict[tuple[str, tuple[str, ...]], SidecarWatch] = field(default_factory=dict)
    last_seen: float = 0.0

    def summary(self) -> dict:
        return {"node": self.node.id, "last_seen": self.last_seen, "subscriptions": [
            {"type": SHORT_TYPE.get(t, t), "names": list(n), "sent": s.sent_version,
             "acked": s.acked_version, "nacked": s.nacked_version, "error": s.nack_error,
             "pushes": s.pushes} for (t, n), s in sorted(self.subs.items())]}


def _content_hash(resources: list[dict]) -> str:
    return hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:12]


class Pilot:
    """The control plane's xDS server. Call `update_endpoints`/`apply` from any thread."""

    def __init__(self, services: Iterable[ServiceSpec], endpoints: Iterable = (),
                 rules: Iterable = (), *, source: XdsSource = DEFAULT_SOURCE, hold_s: float = 15.0,
                 gate_s: float = 2.0,
                 events_path: str | Path | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 builder: Callable[..., list[dict]] = build, auto_mtls: bool = False) -> None:
        if hold_s * 1000 >= source.request_timeout_ms:
            raise ValueError(f"hold_s={hold_s} must be shorter than the sidecars' xDS "
                             f"request_timeout ({source.request_timeout_ms} ms)")
        self.source, self.hold_s, self.gate_s, self.clock = source, hold_s, gate_s, clock
        self._build = builder  # resources.build; tests inject a faulty one to exercise NACKs
        self._events_path = events_path
        self._events_file: IO[str] | None = None
        self._on_event = on_event
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()
        self.state = MeshState(tuple(services), tuple(_endpoint(e) for e in endpoints), (),
                               auto_mtls=auto_mtls)
        # (kind, namespace, name) -> {"manifest": the applied YAML document, "applied": time}
        self.manifests: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.generation = 0
        self.nodes: dict[str, NodeState] = {}
        self._nonce = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # created by start() (needs a loop)
        self._runner: web.AppRunner | None = None
        self._cache: dict[tuple, tuple[list[dict], str]] = {}
        self._commit(self.state, "init")
        if rules:
            self.apply(list(rules))

    # ------------------------------------------------------------ state changes
    def _commit(self, state: MeshState, reason: str, **extra: Any) -> None:
        with self._lock:
            self.state = state
            self.generation += 1
            self._cache.clear()
            gen = self.generation
        self.event("config", version=gen, reason=reason, services=len(state.services),
                   endpoints=len(state.endpoints), rules=len(state.rules), **extra)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def update_endpoints(self, endpoints: Iterable[Endpoint | Mapping[str, Any]]
                         | Mapping[str, Iterable[Endpoint]]) -> None:
        """Replace the whole endpoint set: a list of Endpoints/dicts, or the registry
        Discovery's snapshot {service: [Endpoint]} (so it can be its on_change)."""
        if isinstance(endpoints, Mapping):
            endpoints = [e for eps in endpoints.values() for e in eps]
        eps = tuple(sorted((_endpoint(e) for e in endpoints),
                           key=lambda e: (e.service, e.version, e.instance, e.ip, e.port)))
        if eps != self.state.endpoints:
            self._commit(replace(self.state, endpoints=eps), "endpoints")

    def apply(self, rules: Iterable) -> list[Message]:
        """Create-or-replace rules by (kind, namespace, name) after Galley validation, as
        ``kubectl apply`` does (within one apply too: the later resource replaces the earlier).
        Returns warnings; raises ApplyRejected (nothing changed) on any Error."""
        rules = list({(r.kind, r.namespace, r.name): r for r in rules}.values())
        keys = {(r.kind, r.namespace, r.name) for r in rules}
        merged = [r for r in self.state.rules if (r.kind, r.namespace, r.name) not in keys]
        msgs = analyze(self.state.services, merged + rules)
        errors = [m for m in msgs if m.level == ERROR]
        if errors:
            self.event("apply_rejected", messages=[m.format() for m in errors])
            raise ApplyRejected(errors)
        self._commit(replace(self.state, rules=tuple(merged + rules)), "apply",
                     applied=[f"{r.kind}/{r.name}" for r in rules])
        files = {r.file for r in rules}     # warn about what this apply brings, as kubectl does
        return [m for m in msgs if m.file in files]

    def apply_text(self, text: str, file: str = "<string>") -> list[Message]:
        """Parse Istio YAML and apply it; schema errors reject it like Galley errors."""
        return self.apply_texts([(text, file)])

    def apply_texts(self, files: Iterable[tuple[str, str]]) -> list[Message]:
        """Apply several (text, file name) at once: all or nothing."""
        files = list(files)
        rules: list = []
        msgs: list[Message] = []
        for text, file in files:
            r, m = parse_rules(text, file)
            rules += r
            msgs += m
        errors = [m for m in msgs if m.level == ERROR]
        if errors:
            self.event("apply_rejected", messages=[m.format() for m in errors])
            raise ApplyRejected(errors)
        out = msgs + self.apply(rules)
        now = self.clock()
        for text, _ in files:         # what `get -o yaml` shows: the documents as applied
            for doc in load_documents(text):
                key = _identity(doc)
                if any((r.kind, r.namespace, r.name) == key for r in self.state.rules):
                    self.manifests[key] = {"manifest": doc.plain(), "applied": now}
        return out

    def remove(self, kind: str, name: str, namespace: str = "default") -> bool:
        return bool(self.remove_all([(kind, namespace, name)]))

    def remove_all(self, keys: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Remove the rules named by (kind, namespace, name) in one config change; returns
        the keys that were there (the others are left to the caller to report)."""
        keys = set(keys)
        have = {(r.kind, r.namespace, r.name) for r in self.state.rules}
        found = sorted(keys & have)
        if found:
            rules = tuple(r for r in self.state.rules if (r.kind, r.namespace, r.name) not in keys)
            self._commit(replace(self.state, rules=rules), "remove",
                         removed=[f"{k}/{n}" for k, _, n in found])
            for key in found:
                self.manifests.pop(key, None)
        return found

    def delete_texts(self, files: Iterable[tuple[str, str]]) -> tuple[list[str], list[Message]]:
        """``kubectl delete -f``: remove every resource the files name (kind, namespace,
        name; the rest of each document is not checked). Returns (deleted, NotFound errors
        for names that were not applied); YAML that does not parse rejects the whole call."""
        named: list[tuple[tuple[str, str, str], str, int]] = []
        for text, file in files:
            docs, bad = read_documents(text, file)
            if bad:
                raise ApplyRejected(bad)
            named += [(_identity(d), file, d.line) for d in docs]
        found = set(self.remove_all(k for k, _, _ in named))
        missing = [Message("NotFound", ERROR, f"{k[0]} {k[1]}/{k[2]} not found", file, line,
                           f"{k[0]} {k[2]}") for k, file, line in named if k not in found]
        return [f"{k[0]}/{k[2]}" for k in sorted(found)], missing

    # ------------------------------------------------------------ events
    def event(self, kind: str, **fields: Any) -> None:
        ev = {"t": self.clock(), "event": kind, **fields}
        with self._events_lock:
            if self._events_path and self._events_file is None:
                self._events_file = open(self._events_path, "a", buffering=1)
            if self._events_file:
                self._events_file.write(json.dumps(ev, sort_keys=True) + "\n")
            if self._on_event:
                self._on_event(ev)

    # ------------------------------------------------------------ xDS serving
    def _resources(self, node: NodeInfo, type_url: str,
                   names: tuple[str, ...]) -> tuple[list[dict], str, int]:
        with self._lock:
            state, gen = self.state, self.generation
        key = (gen, type_url, names, node.cache_key(type_url))
        hit = self._cache.get(key)
        if hit is None:
            res = self._build(state, node, type_url, list(names), self.source)
            hit = (res, _content_hash(res))
            with self._lock:
                if self.generation == gen:
                    self._cache[key] = hit
        return hit[0], hit[1], gen

    def _classify(self, ns: NodeState, sub: SidecarWatch, type_url: str,
                  req: Mapping[str, Any]) -> None:
        """ACK/NACK of the last push. Envoy's REST client sends neither nonce nor
        error_detail: it ACKs by sending the pushed version_info and NACKs by sending its
        old one. A client that does send a nonce must send the pushed one."""
        nonce, version = req.get("response_nonce", ""), req.get("version_info", "")
        err = req.get("error_detail")
        if not sub.sent_nonce:
            # nothing pushed yet by this Pilot (e.g. it restarted): a client that already
            # holds a version has applied it; remember it so routes are not held back
            if version and not err:
                sub.acked_version, sub.acked_at = version, self.clock()
            return
        if nonce and nonce != sub.sent_nonce:
            return
        if not version and not err:  # a (re)started client: a fresh subscription
            sub.acked_version = sub.nacked_version = sub.nack_error = ""
            return
        short = SHORT_TYPE[type_url]
        if version == sub.sent_version and not err:
            if sub.acked_version != version:
                sub.acked_version, sub.acked_at = version, self.clock()
                self.event("ack", node=ns.node.id, type=short, version=version, nonce=nonce,
                           latency_ms=round((sub.acked_at - sub.sent_at) * 1000, 3))
            return
        if sub.nacked_version == sub.sent_version or sub.acked_version == sub.sent_version:
            return
        if err:
            msg = err.get("message", json.dumps(err)) if isinstance(err, dict) else str(err)
        else:
            msg = f"client kept version {version!r} (REST client rejected the update)"
        sub.nacked_version, sub.nack_error = sub.sent_version, msg
        log.warning("NACK from %s for %s %s: %s", ns.node.id, short, sub.sent_version, msg)
        self.event("nack", node=ns.node.id, type=short, version=sub.sent_version,
                   nonce=nonce, kept=version, error=msg)

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        type_url = TYPE_BY_PATH.get(request.match_info["type"])
        if type_url is None:
            raise web.HTTPNotFound(text=f"unknown xDS type; use {', '.join(TYPE_BY_PATH)}")
        try:
            req = await request.json()
            node = NodeInfo.from_node(req.get("node") or {})
        except (ValueError, json.JSONDecodeError) as e:
            raise web.HTTPBadRequest(text=f"bad DiscoveryRequest: {e}") from None
        names = tuple(sorted(req.get("resource_names") or ()))
        ns = self.nodes.get(node.id)
        if ns is None or ns.node != node:
            ns = self.nodes[node.id] = NodeState(node, ns.subs if ns else {})
        ns.last_seen = self.clock()
        sub = ns.subs.setdefault((type_url, names), SidecarWatch())
        self._classify(ns, sub, type_url, req)
        have = req.get("version_info", "")
        loop = asyncio.get_running_loop()
        deadline, gate_until = loop.time() + self.hold_s, loop.time() + self.gate_s
        while True:
            waiter = self._changed
            resources, h, gen = self._resources(node, type_url, names)
            if not have.endswith("-" + h) and not sub.nacked_version.endswith("-" + h):
                if type_url == ROUTE and loop.time() < gate_until and \
                        self._clusters_pending(ns, node):
                    await asyncio.sleep(0.01)  # make-before-break: clusters first
                    continue
                return self._push(ns, sub, type_url, resources, f"{gen}-{h}")
            remaining = deadline - loop.time()
            if remaining <= 0 or waiter is None:
                return web.Response(status=304)
            try:
                await asyncio.wait_for(waiter.wait(), remaining)
            except asyncio.TimeoutError:
                return web.Response(status=304)

    def _clusters_pending(self, ns: NodeState, node: NodeInfo) -> bool:
        """True while the node's CDS push of the current clusters, or the first EDS of
        any of them, is still unanswered (routes to them would 503 meanwhile)."""
        cds = ns.subs.get((CLUSTER, ()))
        if cds is None:
            return False
        clusters, h, _ = self._resources(node, CLUSTER, ())
        if cds.nacked_version.endswith("-" + h):
            return False
        if not cds.acked_version.endswith("-" + h):
            return True
        if not any(t == ENDPOINT for t, _ in ns.subs):
            return False  # a client without EDS subscriptions: nothing more to wait for
        for c in clusters:
            if c.get("type") == "EDS":
                eds = ns.subs.get((ENDPOINT, (c["name"],)))
                if eds is None or not (eds.acked_version or eds.nacked_version):
                    return True
        return False

    def _push(self, ns: NodeState, sub: SidecarWatch, type_url: str, resources: list[dict],
              version: str) -> web.Response:
        self._nonce += 1
        sub.sent_version, sub.sent_nonce, sub.sent_at = version, str(self._nonce), self.clock()
        sub.pushes += 1
        self.event("push", node=ns.node.id, type=SHORT_TYPE[type_url], version=version,
                   nonce=sub.sent_nonce, resources=len(resources))
        return web.json_response({"version_info": version, "resources": resources,
                                  "type_url": type_url, "nonce": sub.sent_nonce})

    async def _apply_http(self, request: web.Request) -> web.Response:
        """POST /apply?file=NAME with Istio YAML, or JSON {"files": [{"name", "text"}]}
        (all or nothing): 200 {applied, generation, warnings} or 400 {..., errors}."""
        if request.content_type == "application/json":
            body = await request.json()
            files = [(f["text"], f["name"]) for f in body.get("files", [])]
        else:
            files = [(await request.text(), request.query.get("file", "<request>"))]
        try:
            msgs = self.apply_texts(files)
        except ApplyRejected as e:
            return web.json_response({"applied": False, "generation": self.generation,
                                      "errors": [m.format() for m in e.messages]}, status=400)
        return web.json_response({"applied": True, "generation": self.generation,
                                  "warnings": [m.format() for m in msgs]})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _syncz(self, request: web.Request) -> web.Response:
        return web.json_response({"generation": self.generation,
                                  "nodes": [n.summary() for n in self.nodes.values()]})

    async def _config(self, request: web.Request) -> web.Response:
        """What Pilot would send a node: GET /debug/config?node=<node.id>."""
        ns = self.nodes.get(request.query.get("node", ""))
        if ns is None:
            raise web.HTTPNotFound(text=f"unknown node; known: {', '.join(self.nodes)}")
        return web.json_response({SHORT_TYPE[t]: self._resources(ns.node, t, ())[0]
                                  for t in TYPE_BY_PATH.values()})

    # ------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 15010) -> int:
        """Serve on host:port (port 0 = any free port); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v3/discovery:{type}", self._discovery)
        app.router.add_post("/apply", self._apply_http)
        app.router.add_get("/debug/syncz", self._syncz)
        app.router.add_get("/debug/config", self._config)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        bound = self._runner.addresses[0][1]      # this runner's one site: the port bound
        self.event("start", address=f"{host}:{bound}")
        return bound

    async def stop(self) -> None:
        """Stop serving (idempotent). Sidecars keep their last config."""
        if self._runner is None:
            return
        self._wake()
        await self._runner.cleanup()
        self._runner = None
        self.event("stop")
        self._loop = None
        with self._events_lock:
            if self._events_file:
                self._events_file.close()
                self._events_file = None


def _identity(doc: Y) -> tuple[str, str, str]:
    """(kind, namespace, name) of a resource document (namespace "default" if not given)."""
    kind, name = document_identity(doc)
    meta = doc.v.get("metadata") if isinstance(doc.v, dict) else None
    ns = meta.v.get("namespace") if meta is not None and isinstance(meta.v, dict) else None
    return kind, str(ns.v) if ns is not None and ns.v else "default", name


def _endpoint(e: Endpoint | Mapping[str, Any]) -> Endpoint:
    return e if isinstance(e, Endpoint) else Endpoint.from_dict(e)
