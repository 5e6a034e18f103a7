"""Citadel: the CA served over HTTP (SDS-like).

Its client, the sidecar's `CertificateRotator`, is proxy/tls/rotator.py.

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
"""
from __future__ import annotations

import argparse
import asyncio
import logging
from collections import Counter, defaultdict
from typing import Any, Callable

from aiohttp import web

import testbed.mesh.citadel.store as citadel_store
from testbed.mesh.citadel.ca import CertificateAuthority
from proxy.tls.identity import SpiffeId

log = logging.getLogger("minimesh.citadel")


def _hex(serials) -> list[str]:
    return sorted(f"{s:x}" for s in serials)


class Citadel:
    def __init__(self, ca: CertificateAuthority | None = None, host: str = "127.0.0.1",
                 port: int = 0, event: Callable[[dict], None] | None = None,
                 state_dir: str | None = None) -> None:
        self.ca = ca or CertificateAuthority()
        self.state_dir = state_dir  # saved after every change (citadel/store.py)
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
