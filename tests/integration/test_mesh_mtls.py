"""Citadel wired into minimesh-proxy through Pilot, end to end on loopback (no root needed).

Processes: Citadel and Pilot (in the test's event loop), an echo upstream
(`python -m testbed.apps.echo`), the server sidecar `echo` (inbound listener in front of the
echo app) and two client sidecars `sleep` and `other` (minimesh-proxy processes, xDS from
Pilot, certificates from Citadel via node metadata CITADEL). Requests go client sidecar ->
(mTLS, SPIFFE check of spiffe://cluster.local/ns/default/sa/echo) -> server sidecar -> echo.

* STRICT: N plaintext attempts straight at the server sidecar's inbound port are all refused
  while sidecar-to-sidecar requests all succeed; PERMISSIVE accepts both; DISABLE plaintext only.
* AuthorizationPolicy ALLOW from `sleep`: sleep 100 % 200, other 100 % 403, the server's
  access log has flag RBAC, /stats has http.inbound_<port>.rbac.denied.
Every process started here is stopped in a finally block.
"""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from testbed.mesh.citadel.server import Citadel
from testbed.mesh.citadel.ca import CertificateAuthority
from testbed.mesh.model import ServiceSpec, VersionSpec
from testbed.mesh.pilot.server import Pilot
from testbed.mesh.pilot.security import citadel_metadata
from testbed.mesh.pilot.resources import NodeInfo, XdsSource, sidecar_bootstrap

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SOURCE = XdsSource(refresh_delay_ms=50, request_timeout_ms=10000)
SERVER_IP, CLIENT_IPS = "127.0.0.41", {"sleep": "127.0.0.42", "other": "127.0.0.43"}
N = 100


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def peer_auth(mode: str) -> str:
    return f"""
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: {mode}}}}}
"""


ALLOW_SLEEP = """
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: echo-allow-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
"""


class MtlsMesh:
    """Citadel + Pilot + echo app + server sidecar + client sidecars (see module docstring)."""

    def __init__(self, tmp: Path, cert_ttl_s: float | None = None, keylog: bool = False,
                 clients: tuple[str, ...] = ("sleep", "other"), rules: str = "",
                 argv_prefix: tuple[str, ...] = (), builder=None,
                 renew_fraction: float | None = None) -> None:
        self.tmp, self.cert_ttl_s, self.keylog, self.rules = tmp, cert_ttl_s, keylog, rules
        self.argv_prefix, self.builder, self.renew_fraction = argv_prefix, builder, renew_fraction
        self.svc_port, self.app_port = free_port(SERVER_IP), free_port()
        self.svc = ServiceSpec("echo", self.svc_port, (VersionSpec("v1"),))
        self.events: list[dict] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, object] = {}
        self.admin: dict[str, int] = {}
        self.out_port: dict[str, int] = {}
        self.clients = clients
        self.citadel: Citadel | None = None
        self.pilot: Pilot | None = None
        self.access_log = tmp / "echo-access.jsonl"
        self.keylog_path = tmp / "keys.log"

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.logs[name] = open(self.tmp / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(list(self.argv_prefix) + argv, cwd=REPO,
                                            stdout=self.logs[name], stderr=subprocess.STDOUT)

    def _sidecar(self, name: str, node: NodeInfo) -> None:
        self.admin[name] = free_port()
        cfg = sidecar_bootstrap(node, ("127.0.0.1", self.pilot_port), self.admin[name], source=SOURCE)
        md = cfg["node"]["metadata"]
        md.update(citadel_metadata(f"http://127.0.0.1:{self.citadel.port}", node.service,
                                   cert_ttl_s=self.cert_ttl_s,
                                   keylog=str(self.keylog_path) if self.keylog else "",
                                   bundle_refresh_s=1, renew_fraction=self.renew_fraction))
        boot = self.tmp / f"{name}-bootstrap.json"
        boot.write_text(json.dumps(cfg))
        self._spawn(name, [sys.executable, "-m", "proxy", "-c", str(boot), "-l", "info"])

    async def __aenter__(self) -> "MtlsMesh":
        try:
            self.citadel = Citadel(CertificateAuthority(default_ttl_s=3600, max_ttl_s=3600),
                                   event=self.events.append)
            await self.citadel.start()
            eps = [dict(service="echo", version="v1", instance="echo-0", host="h1", ip=SERVER_IP,
                        port=self.svc_port, labels={})]
            kw = {"builder": self.builder} if self.builder else {}
            self.pilot = Pilot([self.svc], eps, hold_s=2.0, on_event=self.events.append, source=SOURCE,
                               **kw)
            if self.rules:
                self.pilot.apply_text(self.rules)
            self.pilot_port = await self.pilot.start("127.0.0.1", 0)
            await self.before_sidecars()
            self._spawn("app", [sys.executable, "-m", "testbed.apps.echo", "--bind", "127.0.0.1",
                                "--port", str(self.app_port), "--service", "echo"])
            self._sidecar("echo", NodeInfo.make(SERVER_IP, "echo-0", "echo",
                                                labels={"app": "echo", "version": "v1"},
                                                app_port=self.app_port, inbound_address=SERVER_IP,
                                                outbound_address=SERVER_IP,
                                                outbound_port=free_port(SERVER_IP),
                                                access_log=str(self.access_log)))
            for c in self.clients:
                ip = CLIENT_IPS[c]
                self.out_port[c] = free_port(ip)
                self._sidecar(c, NodeInfo.make(ip, f"{c}-0", c, labels={"app": c},
                                               outbound_address=ip, outbound_port=self.out_port[c],
                                               access_log=str(self.tmp / f"{c}-access.jsonl")))
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50))
            for name in self.admin:
                await self.wait_ready(name)
            await self.wait_port("127.0.0.1", self.app_port)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def before_sidecars(self) -> None:
        """Hook for subclasses (e.g. SDS files for a real-Envoy sidecar)."""

    async def after_sidecars(self) -> None:
        """Hook for subclasses: runs first in __aexit__."""

    async def __aexit__(self, *exc) -> None:
        await self.after_sidecars()
        if hasattr(self, "http"):
            await self.http.close()
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs.values():
            f.close()
        if self.pilot is not None:
            await self.pilot.stop()
        if self.citadel is not None:
            await self.citadel.stop()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    async def wait_ready(self, name: str) -> None:
        for _ in range(750):
            try:
                async with self.http.get(f"http://127.0.0.1:{self.admin[name]}/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} not ready:\n" + self.log(name))

    async def wait_port(self, ip: str, port: int) -> None:
        for _ in range(500):
            try:
                _, w = await asyncio.open_connection(ip, port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise AssertionError(f"{ip}:{port} never opened")

    async def via(self, client: str, path: str = "/") -> int:
        """One request through a client sidecar to the echo service; status (0: no response)."""
        try:
            async with self.http.get(f"http://{CLIENT_IPS[client]}:{self.out_port[client]}{path}",
                                     headers={"Host": f"echo:{self.svc_port}"}) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return 0

    async def plaintext(self, path: str = "/") -> int:
        """One plaintext HTTP request straight at the server sidecar's inbound port."""
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://{SERVER_IP}:{self.svc_port}{path}",
                                 timeout=aiohttp.ClientTimeout(total=3)) as r:
                    await r.read()
                    return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0

    def access(self, name: str) -> list[dict]:
        """The JSON access log of a sidecar (server: echo-access.jsonl)."""
        path = self.access_log if name == "echo" else self.tmp / f"{name}-access.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    async def stats(self, name: str) -> dict[str, int]:
        async with self.http.get(f"http://127.0.0.1:{self.admin[name]}/stats") as r:
            text = await r.text()
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            try:
                out[k] = float(v) if "." in v else int(v)
            except ValueError:
                pass
        return out

    async def until(self, cond, timeout_s: float = 15.0, what: str = "") -> None:
        t0 = time.monotonic()
        while not await cond():
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"timed out waiting for {what}\necho log:\n{self.log('echo')}")
            await asyncio.sleep(0.1)

    async def apply(self, text: str, check, what: str) -> None:
        """Apply Istio YAML and wait until `check()` holds 5 times in a row."""
        assert self.pilot is not None
        self.pilot.apply_text(text)

        async def stable() -> bool:
            for _ in range(5):
                if not await check():
                    return False
            return True
        await self.until(stable, what=what)


def run(coro, timeout_s: float = 180):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def counts(coro_factory, n: int = N) -> dict[int, int]:
    out: dict[int, int] = {}
    for _ in range(n):
        s = await coro_factory()
        out[s] = out.get(s, 0) + 1
    return out


def test_strict_permissive_disable(tmp_path: Path) -> None:
    run(_strict_permissive_disable(tmp_path))


async def _strict_permissive_disable(tmp_path: Path) -> None:
    async with MtlsMesh(tmp_path, clients=("sleep",)) as m:
        await m.apply(peer_auth("STRICT"), lambda: _is(m.plaintext(), 0), "STRICT")
        via, plain = await counts(lambda: m.via("sleep")), await counts(m.plaintext)
        assert via == {200: N}, via
        assert plain == {0: N}, plain            # every plaintext attempt refused
        st = await m.stats("echo")
        assert st[f"listener.{SERVER_IP}_{m.svc_port}.ssl.rejected.plaintext"] >= N
        assert st[f"listener.{SERVER_IP}_{m.svc_port}.ssl.handshake"] >= 1
        cst = await m.stats("sleep")
        assert cst[f"cluster.outbound|{m.svc_port}||echo.ssl.handshake"] >= 1
        assert 0 < cst["server.days_until_first_cert_expiring"] <= 1.0
        assert "reason=plaintext" in m.log("echo")

        await m.apply(peer_auth("PERMISSIVE"), lambda: _is(m.plaintext(), 200), "PERMISSIVE")
        assert await counts(lambda: m.via("sleep"), 50) == {200: 50}
        assert await counts(m.plaintext, 50) == {200: 50}
        hs0 = (await m.stats("sleep"))[f"cluster.outbound|{m.svc_port}||echo.ssl.handshake"]

        await m.apply(peer_auth("DISABLE"), lambda: _is(m.via("sleep"), 200), "DISABLE")
        assert await counts(m.plaintext, 50) == {200: 50}
        assert await counts(lambda: m.via("sleep"), 50) == {200: 50}
        # DISABLE: the client now speaks plaintext (no new handshakes) and TLS is refused
        hs1 = (await m.stats("sleep"))[f"cluster.outbound|{m.svc_port}||echo.ssl.handshake"]
        await counts(lambda: m.via("sleep"), 10)
        assert (await m.stats("sleep"))[f"cluster.outbound|{m.svc_port}||echo.ssl.handshake"] == hs1
        assert hs1 >= hs0


async def _is(coro, want: int) -> bool:
    return await coro == want


def test_authorization_policy_allow_principal(tmp_path: Path) -> None:
    run(_authorization_policy_allow_principal(tmp_path))


async def _authorization_policy_allow_principal(tmp_path: Path) -> None:
    async with MtlsMesh(tmp_path, rules=peer_auth("STRICT")) as m:
        await m.until(lambda: _is(m.via("other"), 200), what="mTLS up")
        await m.apply(ALLOW_SLEEP, lambda: _is(m.via("other"), 403), "AuthorizationPolicy")
        allowed = await counts(lambda: m.via("sleep"))
        denied = await counts(lambda: m.via("other"))
        assert allowed == {200: N}, allowed
        assert denied == {403: N}, denied
        st = await m.stats("echo")
        assert st[f"http.inbound_{m.svc_port}.rbac.denied"] >= N
        assert st[f"http.inbound_{m.svc_port}.rbac.allowed"] >= N
        await asyncio.sleep(1.2)        # the file access log flushes about once a second
        entries = [json.loads(x) for x in m.access_log.read_text().splitlines() if x.strip()]
        inbound = [e for e in entries if e.get("listener") == f"inbound_{m.svc_port}"]
        rbac = [e for e in inbound if e["flags"] == "RBAC"]
        assert len(rbac) >= N and all(int(e["code"]) == 403 for e in rbac)
        # the client sidecar sees the 403 as an upstream answer, not a local one
        async with m.http.get(f"http://{CLIENT_IPS['other']}:{m.out_port['other']}/",
                              headers={"Host": f"echo:{m.svc_port}"}) as r:
            assert r.status == 403 and await r.text() == "RBAC: access denied"
