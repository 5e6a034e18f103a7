"""What runs in the Pilot process: Pilot with its registry watch, and its admin API.

Started by ``python -m testbed.mesh.pilot.process CONFIG.json`` (the entry point, and the
config format, are in :mod:`testbed.mesh.pilot.process`). This module loads aiohttp and,
through the etcd client and the xDS resources, cryptography: it is for the Pilot process
only; ``AdminClient``, which ``minimesh apply`` / ``registry`` load, lives in ``process``.

- :class:`MeshPilot`: :class:`~testbed.mesh.pilot.server.Pilot` that can tell which nodes
  are current (``GET /status``) and each node's sync per xDS type (``GET /proxy-status``);
- :class:`AdminApi`: the HTTP API on the unix socket (``POST /apply``, ``GET /registry``,
  ``/status``, ``/syncz``, ``/proxy-status``, ``/describe``, ``/healthz``);
- :func:`run`: the process's body, from the config to SIGTERM.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from aiohttp import web

from testbed.aio import stop_event
from testbed.mesh.etcd.client import EtcdClient
from testbed.mesh.etcd.registry import DEFAULT_PREFIX, Discovery, parse_endpoint
from testbed.mesh.model import Message, ServiceSpec, VersionSpec
from testbed.mesh.pilot.describe import DescribeError, describe_service
from testbed.mesh.pilot.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, XdsSource
from testbed.mesh.pilot.security import SDS_ROOT_ENV
from testbed.mesh.pilot.server import ApplyRejected, NodeState, Pilot
from testbed.mesh.rules.yamldoc import document_identity, load_documents
from testbed.mesh.spec import needs_citadel

__all__ = ["MeshPilot", "AdminApi", "run"]


class MeshPilot(Pilot):
    """Pilot that remembers the version each subscription last asked with, so /status
    can tell a node that is current (e.g. after a Pilot restart, when nothing is
    re-pushed) from one that is behind."""

    def _classify(self, ns: NodeState, sub: Any, type_url: str, req: Mapping[str, Any]) -> None:
        sub.asked_version = req.get("version_info", "")     # sub: a SidecarWatch, given one more field
        super()._classify(ns, sub, type_url, req)

    def node_current(self, ns: NodeState) -> bool:
        types = {t for t, _ in ns.subs}
        if not {LISTENER, CLUSTER, ROUTE} <= types:
            return False
        clusters = self._resources(ns.node, CLUSTER, ())[0]
        wanted = {c["name"] for c in clusters if c.get("type") == "EDS"}
        eds = {n for t, names in ns.subs if t == ENDPOINT for n in names}
        if not wanted <= eds:
            return False
        for (t, names), sub in list(ns.subs.items()):
            if t == ENDPOINT and not wanted & set(names):
                continue  # a removed cluster's subscription, no longer polled
            h = "-" + self._resources(ns.node, t, names)[1]
            if not (sub.acked_version.endswith(h) or
                    getattr(sub, "asked_version", "").endswith(h)):
                return False
        return True


    # --- istioctl proxy-status ------------------------------------------------------------

    XDS_COLUMNS = (("CDS", CLUSTER), ("LDS", LISTENER), ("EDS", ENDPOINT), ("RDS", ROUTE))

    def proxy_status(self) -> dict:
        """Per node and xDS type, the version it holds against what Pilot would send now:
        SYNCED (the same content), STALE (something else: an older push, or a NACK of the
        latest; ``error`` says which), NOT SENT (nothing sent nor held). EDS aggregates the
        node's subscriptions of the clusters it has now (as :meth:`node_current`)."""
        proxies = []
        for nid, ns in list(self.nodes.items()):
            types = {}
            for short, t in self.XDS_COLUMNS:
                subs = [(names, sub) for (tt, names), sub in list(ns.subs.items()) if tt == t]
                if t == ENDPOINT:
                    wanted = {c["name"] for c in self._resources(ns.node, CLUSTER, ())[0] if c.get("type") == "EDS"}
                    subs = [(n, s) for n, s in subs if wanted & set(n)]
                types[short] = _aggregate([self._sub_status(ns, t, n, s) for n, s in subs])
            proxies.append({"node": nid, "last_seen": ns.last_seen, "types": types})
        return {"generation": self.generation, "proxies": proxies}

    def _sub_status(self, ns: NodeState, type_url: str, names: tuple[str, ...], sub: Any) -> dict:
        h = self._resources(ns.node, type_url, names)[1]
        held = sub.acked_version or getattr(sub, "asked_version", "")
        out = {"names": list(names), "acked": held, "sent": sub.sent_version, "latest": f"{self.generation}-{h}",
               "error": ""}
        if held.endswith("-" + h) or getattr(sub, "asked_version", "").endswith("-" + h):
            out["status"] = "SYNCED"
        elif sub.sent_version or held:
            out["status"] = "STALE"
            if sub.nacked_version.endswith("-" + h):
                out["error"] = f"NACK of {sub.nacked_version}: {sub.nack_error}"
        else:
            out["status"] = "NOT SENT"
        return out


def _aggregate(subs: list[dict]) -> dict:
    """One column of proxy-status from a type's subscriptions (EDS has one per cluster)."""
    if not subs:
        return {"status": "NOT SENT", "subscriptions": []}
    order = ("STALE", "NOT SENT", "SYNCED")
    status = min((s["status"] for s in subs), key=order.index)
    return {"status": status, "acked": subs[0]["acked"] if len(subs) == 1 else "",
            "latest": subs[0]["latest"] if len(subs) == 1 else "", "subscriptions": subs}


def _services(raw: list[dict]) -> list:
    return [ServiceSpec(s["name"], int(s["port"]),
                        tuple(VersionSpec(v["name"], int(v.get("replicas", 1)), tuple(v.get("hosts", ())))
                              for v in s.get("versions", ())), s.get("run", ""))
            for s in raw]


def _applied_path(cfg: dict) -> Path | None:
    return Path(cfg["applied"]) if cfg.get("applied") else None


def _load_pilot(cfg: dict) -> MeshPilot:
    """Pilot with the topology's rules, then every apply a previous Pilot accepted."""
    if cfg.get("sds_root"):  # where real-Envoy sidecars find their SDS files (pilot/security.py)
        os.environ[SDS_ROOT_ENV] = cfg["sds_root"]
    pilot = MeshPilot(_services(cfg["services"]), events_path=cfg.get("events"),
                      hold_s=float(cfg.get("hold_s", 15)), source=XdsSource(),
                      auto_mtls=bool(cfg.get("auto_mtls", False)))
    if cfg.get("rules"):
        pilot.apply_texts([(Path(p).read_text(), p) for p in cfg["rules"]])
    applied = _applied_path(cfg)
    if applied is not None and applied.exists():  # a restarted Pilot keeps what was applied
        for line in applied.read_text().splitlines():
            entry = json.loads(line)
            if isinstance(entry, dict) and "delete" in entry:
                pilot.delete_texts([(f["text"], f["name"]) for f in entry["delete"]])
            else:
                pilot.apply_texts([(f["text"], f["name"]) for f in entry])
    return pilot


def _refuse_security(files: list[dict]) -> None:
    """A mesh deployed with ``mesh.security.citadel: false`` rejects the rules that need
    Citadel (PeerAuthentication, AuthorizationPolicy, DestinationRule ``tls.mode:
    ISTIO_MUTUAL``): its sidecars hold no certificate."""
    bad = []
    for f in files:
        try:
            docs = load_documents(f["text"])
        except yaml.YAMLError:
            continue  # Galley reports it
        for doc in docs:
            d = doc.plain()
            if isinstance(d, dict) and needs_citadel(d):
                kind, name = document_identity(doc)
                what = "tls.mode ISTIO_MUTUAL" if kind == "DestinationRule" else kind
                bad.append(Message("MM0120", "Error", f"{what} needs Citadel, but this mesh opted out "
                                   "of it with mesh.security.citadel: false; remove that line from the "
                                   "topology (Citadel runs in every mesh by default) and start it again",
                                   f["name"], doc.line, f"{kind} {name}"))
    if bad:
        raise ApplyRejected(bad)


class AdminApi:
    """Pilot's admin HTTP API on the unix socket ``cfg["socket"]``, the way in from the
    root namespace (see :mod:`testbed.mesh.pilot.process`)."""

    def __init__(self, cfg: dict, pilot: MeshPilot, discovery: Discovery, client: EtcdClient):
        self.pilot, self.discovery, self.client = pilot, discovery, client
        self.applied = _applied_path(cfg)
        self.citadel = cfg.get("citadel")
        ip, port = cfg["listen"]
        self.url = f"http://{ip}:{port}"
        self.socket = Path(cfg["socket"])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/apply", self.apply)
        app.router.add_post("/delete", self.delete)
        app.router.add_get("/rules", self.rules)
        app.router.add_get("/registry", self.registry)
        app.router.add_get("/status", self.status)
        app.router.add_get("/syncz", self.syncz)
        app.router.add_get("/proxy-status", self.proxy_status)
        app.router.add_get("/describe", self.describe)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def serve(self) -> web.AppRunner:
        """Listen on the socket (replacing a stale one); the caller cleans the runner up."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        self.socket.unlink(missing_ok=True)
        await web.UnixSite(runner, str(self.socket)).start()
        return runner

    async def apply(self, request: web.Request) -> web.Response:
        body = await request.json()
        files = [{"name": f["name"], "text": f["text"]} for f in body.get("files", [])]
        try:
            if self.citadel is False:
                _refuse_security(files)
            msgs = self.pilot.apply_texts([(f["text"], f["name"]) for f in files])
        except ApplyRejected as e:
            return web.json_response({"applied": False, "generation": self.pilot.generation,
                                      "errors": [m.format() for m in e.messages]}, status=400)
        if self.applied is not None:
            with open(self.applied, "a") as out:
                out.write(json.dumps(files) + "\n")
        return web.json_response({"applied": True, "generation": self.pilot.generation,
                                  "warnings": [m.format() for m in msgs]})

    async def delete(self, request: web.Request) -> web.Response:
        """``kubectl delete -f``: 200 {deleted, generation, errors (NotFound)}; 400 when a
        file does not parse (nothing deleted)."""
        body = await request.json()
        files = [{"name": f["name"], "text": f["text"]} for f in body.get("files", [])]
        try:
            deleted, missing = self.pilot.delete_texts([(f["text"], f["name"]) for f in files])
        except ApplyRejected as e:
            return web.json_response({"deleted": [], "generation": self.pilot.generation,
                                      "errors": [m.format() for m in e.messages]}, status=400)
        if deleted and self.applied is not None:
            with open(self.applied, "a") as out:
                out.write(json.dumps({"delete": files}) + "\n")
        return web.json_response({"deleted": deleted, "generation": self.pilot.generation,
                                  "errors": [m.format() for m in missing]})

    async def rules(self, request: web.Request) -> web.Response:
        """Every applied rule: kind, namespace, name, file, line, age and its YAML document."""
        now = self.pilot.clock()
        out = []
        for r in self.pilot.state.rules:
            m = self.pilot.manifests.get((r.kind, r.namespace, r.name), {})
            out.append({"kind": r.kind, "namespace": r.namespace, "name": r.name, "file": r.file,
                        "line": r.line, "age_s": round(now - m.get("applied", now), 1),
                        "manifest": m.get("manifest")})
        return web.json_response({"generation": self.pilot.generation, "rules": out})

    async def registry(self, request: web.Request) -> web.Response:
        out: dict[str, Any] = {"discovery": {"healthy": self.discovery.healthy,
                                             "last_error": self.discovery.last_error}}
        try:
            r = await self.client.range(DEFAULT_PREFIX, prefix=True)
        except Exception as e:  # reported to the CLI user
            out["error"] = f"{type(e).__name__}: {e}"
            return web.json_response(out, status=503)
        services: dict[str, list] = {}
        invalid = []
        for kv in r.kvs:
            ep = parse_endpoint(kv, DEFAULT_PREFIX)
            if ep is None:
                invalid.append(kv.key.decode(errors="replace"))
            else:
                services.setdefault(ep.service, []).append(
                    {"version": ep.version, "instance": ep.instance, "host": ep.host,
                     "ip": ep.ip, "port": ep.port, "lease": kv.lease})
        out.update(revision=r.revision, services=services, invalid=invalid,
                   member=r.member_id)
        return web.json_response(out)

    async def status(self, request: web.Request) -> web.Response:
        pilot = self.pilot
        nodes = {nid: {"subscriptions": len(ns.subs), "synced": pilot.node_current(ns),
                       "last_seen": ns.last_seen} for nid, ns in list(pilot.nodes.items())}
        return web.json_response({"generation": pilot.generation, "url": self.url,
                                  "endpoints": [e.instance for e in pilot.state.endpoints],
                                  "rules": [f"{r.kind}/{r.name}" for r in pilot.state.rules],
                                  "discovery_healthy": self.discovery.healthy, "nodes": nodes})

    async def syncz(self, request: web.Request) -> web.Response:
        return web.json_response({"generation": self.pilot.generation,
                                  "nodes": [n.summary() for n in list(self.pilot.nodes.values())]})

    async def proxy_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.pilot.proxy_status())

    async def describe(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(describe_service(self.pilot.state, request.query.get("service", "")))
        except DescribeError as e:
            return web.json_response({"error": str(e)}, status=404)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


async def run(cfg: dict) -> None:
    """Serve xDS and the admin API, watching the registry, until SIGTERM or SIGINT."""
    pilot = _load_pilot(cfg)
    client = EtcdClient(cfg["etcd"], timeout_s=1.0)
    discovery = Discovery(client, on_change=pilot.update_endpoints)
    ip, port = cfg["listen"]
    await pilot.start(ip, int(port))
    await discovery.start()
    admin = AdminApi(cfg, pilot, discovery, client)
    runner = await admin.serve()
    print(f"pilot: xDS on http://{ip}:{port}, admin on {admin.socket}", flush=True)

    stop = stop_event()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        admin.socket.unlink(missing_ok=True)
        await discovery.stop()
        await pilot.stop()
        await client.close()
