"""Pilot on loopback with echo upstreams and one sidecar, for the xDS tests.

    async with EnvoyMesh(tmp, envoy_bin) as m:      # (a subclass that starts its sidecar)
        await m.apply(SUBSETS + "---\\n" + SPLIT_90_10)
        await m.versions(100)                        # Counter of (status, version)

The echo rules are the files students apply in topologies/mesh-lab/ (read once here);
:func:`subsets` and :func:`weighted` give variants. :class:`PilotMesh` holds what every
sidecar test shares: echo upstreams v1/v2 on :data:`UP_IPS` (aiohttp; ``/slow`` answers
after 1 s), Pilot with an event list and a ``poison`` switch that corrupts route
resources, and the client side (ACK waits, requests through the sidecar's outbound port,
admin GETs). A subclass starts its sidecar in :meth:`PilotMesh.start_sidecar` and stops it
in :meth:`PilotMesh.stop_sidecar`. Everything started is stopped on every exit path.
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import aiohttp
import yaml
from aiohttp import web

from testbed.mesh.pilot import resources as xds
from testbed.mesh.model import ServiceSpec, VersionSpec
from testbed.mesh.pilot.server import Pilot
from testbed.mesh.pilot.resources import NodeInfo, XdsSource, sidecar_bootstrap
from tests.support.ports import free_port

__all__ = ["RULES_DIR", "SUBSETS", "SPLIT_90_10", "BY_USER_AGENT", "ALL_TO_V1", "ALL_TO_V2", "UP_IPS",
           "subsets", "weighted", "echo_service", "echo_endpoints", "client_node", "PilotMesh", "stop_process"]

RULES_DIR = Path(__file__).resolve().parents[2] / "topologies" / "mesh-lab"
SUBSETS = (RULES_DIR / "echo-subsets.yaml").read_text()        # DestinationRule echo: v1, v2
SPLIT_90_10 = (RULES_DIR / "echo-weights.yaml").read_text()     # v2 destination on line 11
BY_USER_AGENT = (RULES_DIR / "echo-user-agent.yaml").read_text()
ALL_TO_V1 = (RULES_DIR / "echo-all-v1.yaml").read_text()
ALL_TO_V2 = (RULES_DIR / "echo-all-v2.yaml").read_text()
UP_IPS = {"v1": "127.0.0.21", "v2": "127.0.0.22"}


def subsets(*versions: str) -> str:
    """echo-subsets.yaml with exactly these subsets (by the version label)."""
    doc = yaml.safe_load(SUBSETS)
    doc["spec"]["subsets"] = [{"name": v, "labels": {"version": v}} for v in versions]
    return yaml.safe_dump(doc, sort_keys=False)


def weighted(v1: int, v2: int) -> str:
    """echo-weights.yaml with these weights (the file's layout, so its line numbers, kept)."""
    w = {"v1": v1, "v2": v2}
    return re.sub(r"(subset: (v[12])\}, weight: )\d+", lambda m: f"{m[1]}{w[m[2]]}", SPLIT_90_10)


def echo_service(port: int) -> ServiceSpec:
    return ServiceSpec("echo", port, (VersionSpec("v1"), VersionSpec("v2")))


def echo_endpoints(port: int, ips: dict[str, str] = UP_IPS) -> list[dict]:
    """One registry entry per version (echo-<v>-0 on host h<v>)."""
    return [dict(service="echo", version=v, instance=f"echo-{v}-0", host=f"h{v}", ip=ip, port=port, labels={})
            for v, ip in ips.items()]


def client_node(out_port: int = 0) -> NodeInfo:
    """A client sidecar (curl-0 at 127.0.0.30) with its outbound listener on 127.0.0.1:out_port."""
    return NodeInfo.make("127.0.0.30", "curl-0", "client", labels={"app": "curl"}, outbound_address="127.0.0.1",
                         outbound_port=out_port)


def stop_process(p: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; always reaped."""
    p.terminate()
    try:
        p.wait(grace_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class PilotMesh:
    """Echo upstreams (v1, v2), Pilot on 127.0.0.1, one sidecar (the subclass's)."""

    #: (text, replacement) applied to route resources while ``poison`` is on
    POISON: tuple[str, str] = ("", "")
    LOG = "sidecar.log"
    POLL_S = 0.005

    def __init__(self, tmp: Path, source: XdsSource, node: NodeInfo | None = None,
                 pilot_late: bool = False, events_file: bool = False) -> None:
        self.tmp, self.source, self.pilot_late = tmp, source, pilot_late
        self.events: list[dict] = []
        self.port, self.out_port, self.admin = free_port(), free_port(), free_port()
        self.svc = echo_service(self.port)
        self.eps = echo_endpoints(self.port)
        self.node = node or client_node(self.out_port)
        self.events_path = tmp / "events.jsonl" if events_file else None
        self.poison = False
        self.pilot: Pilot | None = None
        self.runners: list[web.AppRunner] = []
        self.http: aiohttp.ClientSession | None = None

    # -------------------------------------------------------------- what a subclass provides
    def upstream_sites(self) -> list[tuple[str, str, int]]:
        """(version it answers with, ip, port) of every echo upstream."""
        return [(v, ip, self.port) for v, ip in UP_IPS.items()]

    async def start_sidecar(self, bootstrap: dict) -> None:
        raise NotImplementedError

    def stop_sidecar(self) -> None:
        raise NotImplementedError

    async def ready(self) -> None:
        """Waits until the sidecar serves (after start_sidecar)."""

    # -------------------------------------------------------------- lifecycle
    def builder(self, state, node, type_url, names, source):
        res = xds.build(state, node, type_url, names, source)
        if self.poison and type_url == xds.ROUTE:
            res = json.loads(json.dumps(res).replace(*self.POISON))
        return res

    async def start_pilot(self, port: int = 0) -> None:
        self.pilot = Pilot([self.svc], self.eps, hold_s=2.0, on_event=self.events.append, builder=self.builder,
                           events_path=self.events_path, source=self.source)
        self.pilot_port = await self.pilot.start("127.0.0.1", port)

    async def _start_upstreams(self) -> None:
        for version, ip, port in self.upstream_sites():
            async def answer(r: web.Request, version: str = version) -> web.Response:
                if r.path == "/slow":
                    await asyncio.sleep(1.0)
                return web.json_response({"service": "echo", "version": version})
            app = web.Application()
            app.router.add_get("/{tail:.*}", answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self.runners.append(runner)
            await web.TCPSite(runner, ip, port).start()

    async def __aenter__(self):
        try:
            await self._start_upstreams()
            if self.pilot_late:        # the sidecar starts first: Pilot is not there yet
                self.pilot_port = free_port()
            else:
                await self.start_pilot()
            await self.start_sidecar(sidecar_bootstrap(self.node, ("127.0.0.1", self.pilot_port), self.admin,
                                                       source=self.source))
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
            await self.ready()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if self.http is not None:
            await self.http.close()
        self.stop_sidecar()
        if self.pilot is not None:
            await self.pilot.stop()
        for r in self.runners:
            await r.cleanup()

    # -------------------------------------------------------------- observing
    def log_tail(self, n: int = 3000) -> str:
        path = self.tmp / self.LOG
        return path.read_text()[-n:] if path.exists() else ""

    def acked(self, type_: str, version: str = "") -> bool:
        return any(e["event"] == "ack" and e["type"] == type_ and e["version"].startswith(version)
                   for e in self.events)

    async def wait_for(self, cond: Callable[[], bool], timeout: float) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, f"timed out; {self.LOG}:\n" + self.log_tail()
            await asyncio.sleep(self.POLL_S)
        return time.monotonic() - t0

    async def apply(self, text: str, name: str = "rules.yaml", timeout: float = 2) -> float:
        """Apply to Pilot; wait until the sidecar ACKs the new routes. Returns the wait in s."""
        self.pilot.apply_text(text, name)
        gen = self.pilot.generation
        return await self.wait_for(lambda: self.acked("routes", f"{gen}-"), timeout)

    async def get(self, path: str = "/", **headers: str) -> tuple[int, str]:
        """(status, version) of one request to echo through the sidecar's outbound port."""
        async with self.http.get(f"http://127.0.0.1:{self.out_port}{path}",
                                 headers={"Host": f"echo:{self.port}", **headers}) as r:
            body = await r.json() if r.status == 200 else {}
            return r.status, body.get("version", "")

    async def versions(self, n: int, **headers: str) -> collections.Counter:
        sem = asyncio.Semaphore(16)

        async def one() -> tuple[int, str]:
            async with sem:
                return await self.get(**headers)
        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))

    async def admin_text(self, path: str) -> str:
        async with self.http.get(f"http://127.0.0.1:{self.admin}{path}") as r:
            return await r.text()

    async def admin_json(self, path: str) -> dict:
        return json.loads(await self.admin_text(path))

    async def stat(self, name: str) -> float:
        text = await self.admin_text(f"/stats?filter=^{name.replace('|', '[|]')}$")
        return float(text.split(": ")[1])
