"""Pilot as a process on the control-plane host, and the client of its admin socket.

    python -m testbed.mesh.pilot.process CONFIG.json

CONFIG (written by :mod:`testbed.mesh.deploy.mesh`)::

    {"services": [{"name", "port", "run", "versions": [{"name", "replicas", "hosts"}]}],
     "rules": ["rules.yaml", ...], "etcd": ["http://10.0.0.5:2379", ...],
     "listen": ["10.0.0.8", 15010], "events": "run/pilot-events.jsonl",
     "socket": "run/pilot.sock", "applied": "run/applied.jsonl", "hold_s": 15}

Every accepted apply is appended to ``applied`` (one JSON line per apply), and a
restarted Pilot re-applies them after the topology's rules, so stopping Pilot loses no
config. Pilot serves xDS on ``listen`` (inside the testbed) and watches the registry with
:class:`~testbed.mesh.etcd.registry.Discovery`. A second HTTP server on the **unix socket**
``socket`` is the way in from the root namespace (a unix socket's path is reachable from
every network namespace that sees the file): ``POST /apply`` (same body and answers as
Pilot's own /apply), ``GET /registry`` (a linearizable listing of etcd), ``GET /status``
(generation, endpoints, which nodes have ACKed everything), ``GET /syncz``, ``/healthz``.
:class:`AdminClient` speaks to it; ``minimesh apply`` / ``registry`` use it.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from testbed.aio import stop_event
from testbed.mesh.model import Message, ServiceSpec, VersionSpec
from testbed.mesh.spec import SECURITY_KINDS

if TYPE_CHECKING:
    from testbed.mesh.pilot.server import NodeState

__all__ = ["AdminClient", "AdminUnavailable", "main"]


class AdminUnavailable(OSError):
    """Nobody answers on the admin socket (Pilot not running)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class AdminClient:
    """HTTP over Pilot's admin unix socket (root namespace, or any host)."""

    def __init__(self, path: str | Path, timeout_s: float = 10.0):
        self.path, self.timeout_s = str(path), timeout_s

    def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.path, self.timeout_s)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, url, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
        except (ConnectionError, FileNotFoundError, socket.timeout) as e:
            raise AdminUnavailable(f"Pilot admin socket {self.path}: {e}") from None
        finally:
            conn.close()

    def get(self, url: str) -> Any:
        status, body = self.request("GET", url)
        if status != 200:
            raise RuntimeError(f"GET {url}: HTTP {status}: {body}")
        return body

    def apply_texts(self, files: list[tuple[str, str]]) -> tuple[bool, dict]:
        """All or nothing: (applied, body with generation and warnings or errors)."""
        status, body = self.request("POST", "/apply",
                                    {"files": [{"name": n, "text": t} for t, n in files]})
        if status not in (200, 400):
            raise RuntimeError(f"POST /apply: HTTP {status}: {body}")
        return bool(body["applied"]), body

    def apply_files(self, paths: list[str]) -> tuple[list[str], int]:
        """`minimesh apply -f`: (message lines, exit code 0 / 1 rejected / 2 unreachable)."""
        files = [(Path(p).read_text(), str(p)) for p in paths]
        try:
            ok, body = self.apply_texts(files)
        except AdminUnavailable as e:
            return [f"Error: cannot reach Pilot: {e}"], 2
        if not ok:
            return list(body["errors"]) + ["rejected: nothing was changed"], 1
        return list(body["warnings"]) + [f"applied {len(paths)} file(s): config version "
                                         f"{body['generation']}"], 0


def _services(raw: list[dict]) -> list:
    return [ServiceSpec(s["name"], int(s["port"]),
                        tuple(VersionSpec(v["name"], int(v.get("replicas", 1)), tuple(v.get("hosts", ())))
                              for v in s.get("versions", ())), s.get("run", ""))
            for s in raw]


def _refuse_security(files: list[dict]) -> None:
    """A mesh deployed without Citadel (``mesh.security.citadel: false`` or no security
    at all) rejects PeerAuthentication/AuthorizationPolicy: its sidecars have no certificate."""
    from testbed.mesh.pilot.server import ApplyRejected     # late: aiohttp and cryptography (see _run)
    bad = []
    for f in files:
        try:
            nodes = list(yaml.compose_all(f["text"]))
        except yaml.YAMLError:
            continue  # Galley reports it
        for node in nodes:
            d = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.MappingNode) else None
            if isinstance(d, dict) and d.get("kind") in SECURITY_KINDS:
                name = (d.get("metadata") or {}).get("name", "") if isinstance(d.get("metadata"), dict) else ""
                bad.append(Message("MM0120", "Error", f"{d['kind']} needs Citadel, but this mesh runs "
                                   "without it; deploy with mesh.security (docs/topology.md)",
                                   f["name"], node.start_mark.line + 1, f"{d['kind']} {name}".strip()))
    if bad:
        raise ApplyRejected(bad)


async def _run(cfg: dict) -> None:
    # late: aiohttp and cryptography (Pilot's server, the etcd client, the xDS resources) are
    # for the Pilot process only; AdminClient, above, is what `minimesh apply`/`registry` load.
    from aiohttp import web

    from testbed.mesh.etcd.client import EtcdClient
    from testbed.mesh.etcd.registry import DEFAULT_PREFIX, Discovery, parse_endpoint
    from testbed.mesh.pilot.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, XdsSource
    from testbed.mesh.pilot.security import SDS_ROOT_ENV
    from testbed.mesh.pilot.server import ApplyRejected, Pilot

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

    if cfg.get("sds_root"):  # where real-Envoy sidecars find their SDS files (pilot/security.py)
        os.environ[SDS_ROOT_ENV] = cfg["sds_root"]
    pilot = MeshPilot(_services(cfg["services"]), events_path=cfg.get("events"),
                  hold_s=float(cfg.get("hold_s", 15)), source=XdsSource())
    if cfg.get("rules"):
        pilot.apply_texts([(Path(p).read_text(), p) for p in cfg["rules"]])
    applied = Path(cfg["applied"]) if cfg.get("applied") else None
    if applied is not None and applied.exists():  # a restarted Pilot keeps what was applied
        for line in applied.read_text().splitlines():
            pilot.apply_texts([(f["text"], f["name"]) for f in json.loads(line)])
    client = EtcdClient(cfg["etcd"], timeout_s=1.0)
    discovery = Discovery(client, on_change=pilot.update_endpoints)
    ip, port = cfg["listen"]
    await pilot.start(ip, int(port))
    await discovery.start()

    async def apply(request: web.Request) -> web.Response:
        body = await request.json()
        files = [{"name": f["name"], "text": f["text"]} for f in body.get("files", [])]
        try:
            if cfg.get("citadel") is False:
                _refuse_security(files)
            msgs = pilot.apply_texts([(f["text"], f["name"]) for f in files])
        except ApplyRejected as e:
            return web.json_response({"applied": False, "generation": pilot.generation,
                                      "errors": [m.format() for m in e.messages]}, status=400)
        if applied is not None:
            with open(applied, "a") as out:
                out.write(json.dumps(files) + "\n")
        return web.json_response({"applied": True, "generation": pilot.generation,
                                  "warnings": [m.format() for m in msgs]})

    async def registry(request: web.Request) -> web.Response:
        out: dict[str, Any] = {"discovery": {"healthy": discovery.healthy,
                                             "last_error": discovery.last_error}}
        try:
            r = await client.range(DEFAULT_PREFIX, prefix=True)
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

    async def status(request: web.Request) -> web.Response:
        nodes = {nid: {"subscriptions": len(ns.subs), "synced": pilot.node_current(ns),
                       "last_seen": ns.last_seen} for nid, ns in list(pilot.nodes.items())}
        return web.json_response({"generation": pilot.generation, "url": f"http://{ip}:{port}",
                                  "endpoints": [e.instance for e in pilot.state.endpoints],
                                  "rules": [f"{r.kind}/{r.name}" for r in pilot.state.rules],
                                  "discovery_healthy": discovery.healthy, "nodes": nodes})

    async def syncz(request: web.Request) -> web.Response:
        return web.json_response({"generation": pilot.generation,
                                  "nodes": [n.summary() for n in list(pilot.nodes.values())]})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/apply", apply)
    app.router.add_get("/registry", registry)
    app.router.add_get("/status", status)
    app.router.add_get("/syncz", syncz)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    sock_path = Path(cfg["socket"])
    sock_path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(sock_path)).start()
    print(f"pilot: xDS on http://{ip}:{port}, admin on {sock_path}", flush=True)

    stop = stop_event()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        sock_path.unlink(missing_ok=True)
        await discovery.stop()
        await pilot.stop()
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m testbed.mesh.pilot.process CONFIG.json", file=sys.stderr)
        return 2
    asyncio.run(_run(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
