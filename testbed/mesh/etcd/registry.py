"""The service registry on etcd, on top of the async client in
:mod:`testbed.mesh.etcd.client` (``EtcdClient``, ``EtcdError``; its failover rules are
described there).

Key layout (docs/registry.md)::

    /minimesh/services/<service>/<version>/<instance>  ->  JSON of an Endpoint
        {"service", "version", "instance", "host", "ip", "port", "labels"}

Each key is attached to its instance's lease: a dead instance disappears when its lease
expires (TTL after the last keep-alive), a clean stop revokes the lease at once.
"""
from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from testbed.mesh.etcd.client import EtcdClient, EtcdError
from testbed.mesh.etcd.wire import KV, WatchError, WatchEvent
from testbed.mesh.model import Endpoint

__all__ = ["DEFAULT_PREFIX", "endpoint_key", "parse_key", "endpoint_json", "Registrar", "Discovery",
           "RegistryListing", "list_registry"]

DEFAULT_PREFIX = "/minimesh/services/"


# --- the registry ---------------------------------------------------------------------------

def _segment(what: str, value: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"endpoint {what} {value!r}: must be non-empty without '/' "
                         f"(key layout <prefix><service>/<version>/<instance>)")
    return value


def endpoint_key(ep: Endpoint, prefix: str = DEFAULT_PREFIX) -> str:
    return prefix + "/".join(_segment(w, v) for w, v in
                             (("service", ep.service), ("version", ep.version), ("instance", ep.instance)))


def parse_key(key: bytes | str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str, str] | None:
    """``(service, version, instance)`` of a registry key, None if it is not one."""
    k = key.decode() if isinstance(key, bytes) else key
    if not k.startswith(prefix):
        return None
    parts = k[len(prefix):].split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def endpoint_json(ep: Endpoint) -> str:
    return json.dumps({"service": ep.service, "version": ep.version, "instance": ep.instance,
                       "host": ep.host, "ip": ep.ip, "port": ep.port, "labels": dict(ep.labels)},
                      sort_keys=True)


def parse_endpoint(kv: KV, prefix: str = DEFAULT_PREFIX) -> Endpoint | None:
    """The Endpoint stored in ``kv``; None if the key or value is not a valid registration
    (wrong layout, bad JSON, or JSON that contradicts its key)."""
    ids = parse_key(kv.key, prefix)
    try:
        ep = Endpoint.from_dict(json.loads(kv.value))
    except (ValueError, KeyError, TypeError):
        return None
    return ep if ids == (ep.service, ep.version, ep.instance) else None


Snapshot = dict[str, list[Endpoint]]


def group(endpoints: Mapping[bytes, Endpoint]) -> Snapshot:
    """``{service: [endpoints sorted by version, instance]}``."""
    out: Snapshot = {}
    for ep in sorted(endpoints.values(), key=lambda e: (e.service, e.version, e.instance)):
        out.setdefault(ep.service, []).append(ep)
    return out


async def _maybe_await(x: Any) -> None:
    if inspect.isawaitable(x):
        await x


Hook = Callable[[str, dict], Any]    # (event kind, details) -> None; for experiment histories


class Registrar:
    """Registers one endpoint with a lease and keeps it alive every ``ttl_s / 3``. When the
    lease is lost (expired during a partition, revoked) it registers again with a new lease.
    ``on_event(kind, details)`` sees registered / keepalive_error / lease_lost /
    reregistered / deregistered."""

    def __init__(self, client: EtcdClient, *, prefix: str = DEFAULT_PREFIX, on_event: Hook | None = None):
        self.client, self.prefix, self.on_event = client, prefix, on_event
        self.endpoint: Endpoint | None = None
        self.ttl_s = 0
        self.lease_id: int | None = None
        self.last_error: str | None = None
        self.reregistrations = 0
        self._task: asyncio.Task | None = None

    @property
    def key(self) -> str:
        assert self.endpoint is not None, "register() first"
        return endpoint_key(self.endpoint, self.prefix)

    def _emit(self, kind: str, **details: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, {"key": self.key, "lease": self.lease_id, **details})

    async def register(self, endpoint: Endpoint, ttl_s: int = 10) -> int:
        """Grant a lease, write the key with it, start the keep-alive task; returns the lease id."""
        if self._task is not None:
            raise RuntimeError(f"already registered as {self.key}; deregister() first")
        if ttl_s < 1:
            raise ValueError(f"registration ttl_s {ttl_s}: must be >= 1 second")
        endpoint_key(endpoint, self.prefix)  # validate before touching etcd
        self.endpoint, self.ttl_s = endpoint, ttl_s
        lease_id = await self._grant_and_put()
        self._emit("registered", ttl_s=ttl_s)
        self._task = asyncio.create_task(self._keepalive_loop(), name=f"keepalive {self.key}")
        return lease_id

    async def _grant_and_put(self) -> int:
        """A new lease, and the key written with it; returns (and keeps) the lease id."""
        self.lease_id = None
        lease = await self.client.lease_grant(self.ttl_s)
        endpoint = self.endpoint
        assert endpoint is not None, "register() first"
        try:
            await self.client.put(self.key, endpoint_json(endpoint), lease=lease.id)
        except EtcdError:
            try:
                await self.client.lease_revoke(lease.id)
            except EtcdError:
                pass  # it expires by itself after ttl_s
            raise
        self.lease_id = lease.id
        return lease.id

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if self.lease_id is None:       # an earlier re-registration failed
                    await self._grant_and_put()
                    self.reregistrations += 1
                    self._emit("reregistered")
                elif await self.client.lease_keepalive(self.lease_id) <= 0:
                    self._emit("lease_lost")
                    self.lease_id = None
                    await self._grant_and_put()
                    self.reregistrations += 1
                    self._emit("reregistered")
                self.last_error = None
            except EtcdError as e:
                self.last_error = str(e)
                self._emit("keepalive_error", error=str(e))
            except Exception as e:  # a bug: stop keeping alive, visibly
                self.last_error = f"keep-alive stopped: {type(e).__name__}: {e}"
                raise

    async def stop_keepalive(self) -> None:
        """Stop keeping the lease alive without revoking it (a simulated hang/crash:
        the key disappears when the lease expires)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def deregister(self) -> None:
        """Clean stop: revoke the lease, which deletes the key at once."""
        await self.stop_keepalive()
        if self.lease_id is not None:
            try:
                await self.client.lease_revoke(self.lease_id)
            except EtcdError as e:   # the lease may already be gone: delete the key itself
                self.last_error = str(e)
                await self.client.delete(self.key)
            self._emit("deregistered")
            self.lease_id = None


class Discovery:
    """Follows every registration under ``prefix``: lists, then watches from the listed
    revision; keeps ``snapshot`` ({service: [Endpoint]}) and calls ``on_change(snapshot)``
    (sync or async) whenever it changes. After a watch error it marks itself unhealthy,
    keeps the last snapshot, waits (exponential backoff) and lists again. A watch silent
    for ``idle_timeout_s`` counts as an error (needs progress notifications more often
    than half of it: EtcdCluster sends them every 1 s, and etcd skips a tick after events);
    None disables the check."""

    def __init__(self, client: EtcdClient, *, prefix: str = DEFAULT_PREFIX,
                 on_change: Callable[[Snapshot], Any] | None = None,
                 backoff_s: float = 0.1, max_backoff_s: float = 2.0, idle_timeout_s: float | None = 5.0):
        self.client, self.prefix, self.on_change = client, prefix, on_change
        self.idle_timeout_s = idle_timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.healthy = False
        self.last_error: str | None = None
        self.revision = 0
        self.resyncs = 0
        self.invalid: set[bytes] = set()     # keys under prefix that are not valid registrations
        self._eps: dict[bytes, Endpoint] = {}
        self._task: asyncio.Task | None = None
        self._synced = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        return group(self._eps)

    async def start(self, timeout_s: float | None = None) -> None:
        """Start following; with ``timeout_s``, wait for the first complete listing."""
        self._task = asyncio.create_task(self.run(), name=f"discovery {self.prefix}")
        if timeout_s is not None:
            async with asyncio.timeout(timeout_s):
                await self._synced.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.healthy = False

    async def run(self) -> None:
        delay = self.backoff_s
        while True:
            try:
                await self._list()
                delay = self.backoff_s
                async with self.client.watch(self.prefix, start_revision=self.revision + 1,
                                             idle_timeout_s=self.idle_timeout_s) as w:
                    async for ev in w:
                        if self._apply(ev):
                            await self._changed()
                        self.revision = max(self.revision, ev.kv.mod_revision)
                    raise WatchError("watch ended")  # unreachable: Watch raises instead
            except (EtcdError, WatchError) as e:
                self.healthy = False
                self.last_error = f"{type(e).__name__}: {e}"
                self.resyncs += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            except Exception as e:  # a bug: stop, but never look healthy while stale
                self.healthy, self.last_error = False, f"discovery stopped: {type(e).__name__}: {e}"
                raise

    async def _list(self) -> None:
        r = await self.client.range(self.prefix, prefix=True)
        eps, self.invalid = {}, set()
        for kv in r.kvs:
            ep = parse_endpoint(kv, self.prefix)
            if ep is None:
                self.invalid.add(kv.key)
            else:
                eps[kv.key] = ep
        changed = eps != self._eps or not self._synced.is_set()
        self._eps, self.revision = eps, r.revision
        self.healthy, self.last_error = True, None
        self._synced.set()
        if changed:
            await self._changed()

    def _apply(self, ev: WatchEvent) -> bool:
        old = self._eps.get(ev.key)
        if ev.type == "DELETE":
            self.invalid.discard(ev.key)
            return self._eps.pop(ev.key, None) is not None
        ep = parse_endpoint(ev.kv, self.prefix)
        if ep is None:
            self.invalid.add(ev.key)
            return self._eps.pop(ev.key, None) is not None
        self._eps[ev.key] = ep
        return old != ep

    async def _changed(self) -> None:
        if self.on_change is not None:
            try:
                await _maybe_await(self.on_change(self.snapshot))
            except Exception as e:  # a broken callback must not stop discovery
                self.last_error = f"on_change raised {type(e).__name__}: {e}"


@dataclass(frozen=True)
class RegistryListing:
    revision: int
    services: dict[str, list[Endpoint]]
    invalid: tuple[str, ...]          # keys under the prefix that are not registrations


def list_registry(endpoints: Sequence[str], *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 2.0,
                  serializable: bool = False) -> RegistryListing:
    """One listing of the registry, for ``minimesh registry list`` (sync; prints nothing)."""
    async def go() -> RegistryListing:
        async with EtcdClient(endpoints, timeout_s=timeout_s) as c:
            r = await c.range(prefix, prefix=True, serializable=serializable)
        eps, bad = {}, []
        for kv in r.kvs:
            ep = parse_endpoint(kv, prefix)
            if ep is None:
                bad.append(kv.key.decode(errors="replace"))
            else:
                eps[kv.key] = ep
        return RegistryListing(r.revision, group(eps), tuple(bad))
    return asyncio.run(go())
