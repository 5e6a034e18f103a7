"""The sidecar's certificate client: keeps one workload's mTLS material fresh from Citadel.

`CertificateRotator(url, service, on_update)`: `await start()` fetches the first material
(a fresh EC key and a CSR per fetch, so the private key never leaves the sidecar), calls
`on_update(material)` (sync or async), renews at `renew_fraction` of the lifetime, and
refreshes the trust bundle and revocation list every `bundle_refresh_s` (calling
`on_update` when they change). Failures are retried with exponential back-off; the current
certificate keeps serving meanwhile.

Citadel's HTTP API (JSON): `POST /v1/sds {node, service, namespace, csr_pem, ttl_s?}` ->
`{spiffe_id, cert_chain_pem, private_key_pem, trust_bundle_pem, not_after, serial,
revoked_serials}` (serials as hex strings) and `GET /v1/trust_bundle` ->
`{trust_bundle_pem, revoked_serials}`; `material_from_json` turns an answer into `Material`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Callable

import aiohttp

from proxy.tls.context import Material
from proxy.tls.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, key_pem, make_csr, new_key

__all__ = ["CertificateRotator", "material_from_json"]
log = logging.getLogger("minimesh.citadel")


def material_from_json(d: dict[str, Any], private_key_pem: bytes | None = None) -> Material:
    return Material(d["spiffe_id"], d["cert_chain_pem"].encode(),
                    private_key_pem or d["private_key_pem"].encode(),
                    d["trust_bundle_pem"].encode(), float(d["not_after"]),
                    int(d["serial"], 16), frozenset(int(s, 16) for s in d["revoked_serials"]))


class CertificateRotator:
    """Keeps one workload's material fresh. `on_update(material)` may be sync or async."""

    def __init__(self, url: str, service: str, on_update: Callable[[Material], Any],
                 namespace: str = "default", node_id: str = "", ttl_s: float | None = None,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN,
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
        material = self.material
        assert material is not None       # renew() published it
        return material

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
