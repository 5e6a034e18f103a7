"""Citadel: the CA served over HTTP (SDS-like), and the sidecar's CertificateRotator.

Server (`Citadel`, aiohttp, JSON):
  POST /v1/sds           {node, service, namespace?, csr_pem?, ttl_s?}
                         -> {spiffe_id, cert_chain_pem, private_key_pem, trust_bundle_pem,
                             not_after, serial, revoked_serials}
                         With `csr_pem` the private key never leaves the sidecar and
                         `private_key_pem` is "" (Istio's model; the rotator always does this).
                         Without it the CA generates the key (tests, curl, real-Envoy demos).
  GET  /v1/trust_bundle  -> {trust_bundle_pem, revoked_serials, roots: [{generation, not_after}]}
  POST /v1/revoke        {serial} or {service, namespace?} -> {revoked: [serial...]}
  POST /v1/rotate_root   {activate_after_s?, overlap_s?} -> {generation}
  POST /v1/block         {service, namespace?, blocked: bool}: refuse renewals (fault:
                         the workload's certificate then expires on its own)
Serials travel as hex strings. The node id (`sidecar~ip~instance~service`) must name the
service it asks for; there is no caller authentication (a testbed, not a production CA).

`stop()` / `start()` close and reopen the port with the same CA state: certificates already
issued keep working while the CA is down; rotators retry with backoff.

Client (`CertificateRotator`): fetches material with a fresh key + CSR, calls `on_update`,
renews at `renew_fraction` of the lifetime, refreshes the trust bundle and revocation list
every `bundle_refresh_s` (calling `on_update` when they change).
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any, Callable

import aiohttp
from aiohttp import web

from testbed.mesh.citadel import store as citadel_store
from testbed.mesh.citadel.ca import CertificateAuthority, key_pem, make_csr, new_key
from testbed.mesh.rules.policy import SpiffeId
from proxy.tls.context import Material

log = logging.getLogger("minimesh.citadel")


def _hex(serials) -> list[str]:
    return sorted(f"{s:x}" for s in serials)


class Citadel:
    def __init__(self, ca: CertificateAuthority | None = None, host: str = "127.0.0.1",
                 port: int = 0, event: Callable[[dict], None] | None = None,
                 state_dir: str | None = None) -> None:
        self.ca = ca or CertificateAuthority()
        self.state_dir = state_dir  # saved after every change (citadel_store)
        self.host, self.port = host, port
        self.event = event or (lambda e: None)  # e.g. an experiment history appender
        self.stats: Counter[str] = Counter()
        self._issued: dict[str, dict[int, float]] = defaultdict(dict)  # uri -> serial -> not_after
        self._blocked: set[str] = set()
        self._runner: web.AppRunner | None = None

    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/v1/sds", self._sds), web.get("/v1/trust_bundle", self._bundle),
                        web.post("/v1/revoke", self._revoke), web.post("/v1/block", self._block),
                        web.post("/v1/rotate_root", self._rotate)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.event({"op": "citadel_start", "url": self.url})

    async def stop(self) -> None:
        """Fault 'stop the CA': the port closes, the CA keeps its keys and state."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.event({"op": "citadel_stop"})

    # -------------------------------------------------------------- fault operations
    def _save(self) -> None:
        if self.state_dir:
            citadel_store.save(self.ca, self.state_dir)

    def revoke(self, serial: int) -> None:
        self.ca.revoke(serial)
        self._save()
        self.stats["revoked"] += 1
        self.event({"op": "revoke", "serial": f"{serial:x}"})

    def revoke_service(self, service: str, namespace: str = "default") -> list[int]:
        """Revoke every unexpired certificate issued to the service; returns the serials."""
        uri = SpiffeId.make(service, namespace, self.ca.trust_domain).uri
        now = self.ca.clock()
        serials = [s for s, na in self._issued[uri].items() if na > now]
        for s in serials:
            self.revoke(s)
        return serials

    def block(self, service: str, namespace: str = "default", blocked: bool = True) -> None:
        uri = SpiffeId.make(service, namespace, self.ca.trust_domain).uri
        (self._blocked.add if blocked else self._blocked.discard)(uri)
        self.event({"op": "block" if blocked else "unblock", "spiffe_id": uri})

    def rotate_root(self, activate_after_s: float = 0.0, overlap_s: float | None = None) -> int:
        root = self.ca.rotate_root(activate_after_s, overlap_s)
        self._save()
        self.event({"op": "rotate_root", "generation": root.generation})
        return root.generation

    # -------------------------------------------------------------- handlers
    def bundle_json(self) -> dict[str, Any]:
        return {"trust_bundle_pem": self.ca.trust_bundle_pem().decode(),
                "revoked_serials": _hex(self.ca.revoked()),
                "roots": [{"generation": r.generation, "retire_at": r.retire_at}
                          for r in self.ca.trust_bundle()]}

    async def _bundle(self, request: web.Request) -> web.Response:
        return web.json_response(self.bundle_json())

    async def _sds(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            service = str(body["service"])
            sid = SpiffeId.make(service, str(body.get("namespace") or "default"),
                                self.ca.trust_domain)
            node = str(body.get("node") or "")
            if node and node.split("~")[-1] not in (service, "client"):
                raise ValueError(f"node {node!r} may not ask for service {service!r}")
            if sid.uri in self._blocked:
                self.stats["refused_blocked"] += 1
                return web.json_response({"error": f"{sid.uri} is blocked (fault)"}, status=503)
            csr = body.get("csr_pem")
            longest = self.ca.longest_ttl_s
            issued = self.ca.issue(sid, csr.encode() if csr else None, body.get("ttl_s"))
            if self.ca.longest_ttl_s > longest:
                self._save()  # the default root overlap depends on the longest lifetime
        except (KeyError, ValueError, TypeError) as e:
            self.stats["bad_requests"] += 1
            msg = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            return web.json_response({"error": msg}, status=400)
        self._issued[sid.uri][issued.serial] = issued.not_after
        self.stats["issued"] += 1
        self.event({"op": "issue", "spiffe_id": sid.uri, "serial": f"{issued.serial:x}",
                    "not_after": issued.not_after, "root": issued.root_generation})
        return web.json_response({
            "spiffe_id": sid.uri, "cert_chain_pem": issued.cert_chain_pem.decode(),
            "private_key_pem": issued.private_key_pem.decode(), "not_after": issued.not_after,
            "serial": f"{issued.serial:x}", **self.bundle_json()})

    async def _revoke(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if "serial" in body:
                serials = [int(str(body["serial"]), 16)]
                self.revoke(serials[0])
            else:
                serials = self.revoke_service(str(body["service"]),
                                              str(body.get("namespace") or "default"))
        except (KeyError, ValueError, TypeError) as e:
            return web.json_response({"error": f"give serial (hex) or service: {e}"}, status=400)
        return web.json_response({"revoked": _hex(serials)})

    async def _block(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.block(str(body["service"]), str(body.get("namespace") or "default"),
                       bool(body.get("blocked", True)))
        except (KeyError, ValueError, TypeError) as e:
            return web.json_response({"error": f"give service: {e}"}, status=400)
        return web.json_response({"ok": True})

    async def _rotate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
            gen = self.rotate_root(float(body.get("activate_after_s", 0.0)),
                                   None if body.get("overlap_s") is None
                                   else float(body["overlap_s"]))
        except (ValueError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"generation": gen})


# ---------------------------------------------------------------- client side
def material_from_json(d: dict[str, Any], private_key_pem: bytes | None = None) -> Material:
    return Material(d["spiffe_id"], d["cert_chain_pem"].encode(),
                    private_key_pem or d["private_key_pem"].encode(),
                    d["trust_bundle_pem"].encode(), float(d["not_after"]),
                    int(d["serial"], 16), frozenset(int(s, 16) for s in d["revoked_serials"]))


class CertificateRotator:
    """Keeps one workload's material fresh. `on_update(material)` may be sync or async."""

    def __init__(self, url: str, service: str, on_update: Callable[[Material], Any],
                 namespace: str = "default", node_id: str = "", ttl_s: float | None = None,
                 trust_domain: str = "cluster.local",
                 renew_fraction: float = 0.5, bundle_refresh_s: float = 5.0,
                 retry_min_s: float = 0.2, retry_max_s: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 logger: logging.Logger = log) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError(f"renew_fraction={renew_fraction} must be in (0, 1)")
        self.url, self.service, self.namespace = url.rstrip("/"), service, namespace
        self.node_id, self.ttl_s, self.on_update = node_id, ttl_s, on_update
        self.trust_domain = trust_domain
        self.renew_fraction, self.bundle_refresh_s = renew_fraction, bundle_refresh_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.clock, self.log = clock, logger
        self.material: Material | None = None
        self.stats: Counter[str] = Counter()
        self.last_error = ""
        self._fetched_at = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    def renew_at(self) -> float:
        m = self.material
        if m is None:
            return 0.0
        return self._fetched_at + self.renew_fraction * (m.not_after - self._fetched_at)

    async def start(self, timeout_s: float = 10.0) -> Material:
        """Fetch the first material (retrying until `timeout_s`), then renew in the background."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        deadline, delay = time.monotonic() + timeout_s, self.retry_min_s
        while True:
            try:
                await self.renew()
                break
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                if time.monotonic() + delay > deadline:
                    await self._session.close()
                    raise RuntimeError(f"no certificate from Citadel at {self.url} within "
                                       f"{timeout_s}s: {self.last_error}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        self._task = asyncio.ensure_future(self._run())
        return self.material  # type: ignore[return-value]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _post(self, path: str, body: dict) -> dict:
        assert self._session is not None
        try:
            async with self._session.post(self.url + path, json=body) as r:
                data = await r.json()
                if r.status != 200:
                    raise ValueError(f"Citadel answered {r.status}: {data.get('error')}")
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            raise

    async def _publish(self, m: Material) -> None:
        self.material = m
        res = self.on_update(m)
        if inspect.isawaitable(res):
            await res

    async def renew(self) -> Material:
        """One CSR round trip; a new key each time."""
        key = new_key()
        sid = SpiffeId.make(self.service, self.namespace, self.trust_domain)
        body: dict[str, Any] = {"node": self.node_id, "service": self.service,
                                "namespace": self.namespace,
                                "csr_pem": make_csr(sid, key).decode()}
        if self.ttl_s is not None:
            body["ttl_s"] = self.ttl_s
        d = await self._post("/v1/sds", body)
        self._fetched_at = self.clock()
        m = material_from_json(d, key_pem(key))
        self.stats["renewals"] += 1
        self.log.info("citadel: got %s serial %x, expires in %.1fs", m.spiffe_id, m.serial,
                      m.not_after - self._fetched_at)
        await self._publish(m)
        return m

    async def refresh_bundle(self) -> bool:
        """Fetch trust bundle + revocations; True (and on_update) when they changed."""
        assert self._session is not None and self.material is not None
        try:
            async with self._session.get(self.url + "/v1/trust_bundle") as r:
                d = await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            raise
        bundle = d["trust_bundle_pem"].encode()
        revoked = frozenset(int(s, 16) for s in d["revoked_serials"])
        m = self.material
        if bundle == m.trust_bundle_pem and revoked == m.revoked:
            return False
        self.stats["bundle_updates"] += 1
        await self._publish(replace(m, trust_bundle_pem=bundle, revoked=revoked))
        return True

    async def _run(self) -> None:
        delay = self.retry_min_s
        next_bundle = self.clock() + self.bundle_refresh_s
        while True:
            now = self.clock()
            wake = min(self.renew_at(), next_bundle)
            if wake > now:
                await asyncio.sleep(wake - now)
                continue
            try:
                if self.clock() >= self.renew_at():
                    await self.renew()
                else:
                    next_bundle = self.clock() + self.bundle_refresh_s
                    await self.refresh_bundle()
                delay = self.retry_min_s
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                self.stats["failures"] += 1
                left = self.material.not_after - self.clock() if self.material else 0
                self.log.warning("citadel: renewal/refresh failed (%s); current cert expires "
                                 "in %.1fs; retrying in %.1fs", self.last_error, left, delay)
                if left <= 0:
                    self.stats["expired"] += 1
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.retry_max_s)


# ---------------------------------------------------------------- command line
async def _serve(args: argparse.Namespace) -> None:
    kw = dict(trust_domain=args.trust_domain, default_ttl_s=args.ttl_s,
              max_ttl_s=max(args.ttl_s, args.max_ttl_s))
    ca = citadel_store.load_or_create(args.state_dir, **kw) if args.state_dir \
        else CertificateAuthority(**kw)
    citadel = Citadel(ca, args.host, args.port, event=lambda e: log.info("event %s", e),
                      state_dir=args.state_dir)
    await citadel.start()
    print(f"citadel: serving {citadel.url} (trust domain {ca.trust_domain}, "
          f"default TTL {ca.default_ttl_s:g}s)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await citadel.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m testbed.mesh.citadel.server --host 10.0.0.254 --port 15012` on the CP host."""
    p = argparse.ArgumentParser(prog="citadel", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=15012)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--ttl-s", type=float, default=3600.0, help="default certificate lifetime")
    p.add_argument("--max-ttl-s", type=float, default=86400.0)
    p.add_argument("--state-dir", help="keep roots and revocations here across restarts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
