"""A thin async client for etcd's JSON gateway (aiohttp): :class:`EtcdClient` (KV, txn,
leases, status, with failover across members) and :class:`Watch` (one watch stream).

Failover: a request goes to the endpoint that answered last, and moves on to the next one
when the member cannot be reached or says it has no leader (the request was not applied).
When the outcome is unknown (timeout, connection lost after sending, "request timed out",
"leader changed"), a read moves on too, but a write raises :class:`EtcdError` with
``indeterminate=True`` rather than being applied twice: linearizability histories record
it as an unknown outcome. The next call starts at the next endpoint.

Request bodies and response parsing are the pure functions of :mod:`testbed.mesh.etcd.wire`;
the watch errors ``WatchError``/``WatchCompacted`` are defined there too (``parse_watch_message``
raises them). The service registry on top of this client is :mod:`testbed.mesh.etcd.registry`.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Sequence

import aiohttp

from testbed.mesh.etcd.wire import (KV, MemberStatus, WatchCompacted, WatchError, WatchEvent, compare,
                                    delete_request, parse_watch_message, put_request, range_request,
                                    txn_request, watch_request)

__all__ = ["EtcdClient", "EtcdError", "RangeResult", "Lease", "Watch"]

HASLEADER = {"Grpc-Metadata-hasleader": "true"}
_DEFINITE = ("no leader", "too many requests", "not capable")          # not applied: fail over
_AMBIGUOUS = ("request timed out", "leader changed", "timed out due to")  # may have been applied


class EtcdError(Exception):
    """An etcd request failed. ``indeterminate``: a write may or may not have been applied."""

    def __init__(self, message: str, *, endpoint: str = "", code: int = 0, indeterminate: bool = False):
        super().__init__(message)
        self.endpoint, self.code, self.indeterminate = endpoint, code, indeterminate


class _Retry(Exception):
    def __init__(self, message: str, ambiguous: bool):
        super().__init__(message)
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KV, ...]
    revision: int      # store revision the read saw
    count: int
    member_id: int     # member that answered


@dataclass(frozen=True)
class Lease:
    id: int
    ttl_s: int         # granted TTL (etcd raises it to its minimum, ~1.5 x election timeout)


class EtcdClient:
    """Async client over etcd's JSON gateway. ``endpoints``: client URLs of the members;
    ``timeout_s`` bounds each attempt (so a call takes at most len(endpoints) x timeout_s);
    ``require_leader`` sends ``hasleader`` with every request except serializable reads,
    so a member without a leader fails fast instead of timing out."""

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 2.0, require_leader: bool = True):
        if not endpoints:
            raise ValueError("EtcdClient: endpoints is empty; give at least one client URL")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout_s = timeout_s
        self.require_leader = require_leader
        self.current = 0               # index of the endpoint tried first
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "EtcdClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    # --- transport ---------------------------------------------------------------------------
    async def _post_once(self, url: str, body: Mapping[str, Any], leader: bool) -> dict:
        try:
            async with self.session.post(url, json=body, headers=HASLEADER if leader else None,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                data = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as e:
            raise _Retry(f"cannot connect: {e}", ambiguous=False) from None
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise _Retry(f"{type(e).__name__}: {e}", ambiguous=True) from None
        if not isinstance(data, dict):
            raise _Retry(f"HTTP {resp.status} with a non-object body: {str(data)[:200]}", ambiguous=True)
        if resp.status == 200 and "error" not in data:
            return data
        err = data.get("error")   # unary: {"error": str, "message", "code"}; streams: {"error": {...}}
        msg = str(err.get("message") if isinstance(err, dict) else data.get("message") or err or data)
        if any(s in msg for s in _DEFINITE):
            raise _Retry(msg, ambiguous=False)
        if any(s in msg for s in _AMBIGUOUS) or resp.status >= 500:
            raise _Retry(msg, ambiguous=True)
        raise EtcdError(f"{url}: {msg}", endpoint=url, code=int(data.get("code") or 0))

    async def call(self, path: str, body: Mapping[str, Any], *, write: bool, needs_leader: bool = True) -> dict:
        """POST ``body`` to ``path`` (e.g. ``/v3/kv/range``) with failover (module docstring)."""
        failures = []
        n, first = len(self.endpoints), self.current
        for attempt in range(n):
            i = (first + attempt) % n
            url = self.endpoints[i] + path
            try:
                data = await self._post_once(url, body, needs_leader and self.require_leader)
            except _Retry as e:
                failures.append(f"{self.endpoints[i]}: {e}")
                if e.ambiguous:
                    self.current = (i + 1) % n
                    if write:
                        raise EtcdError(f"{path} outcome unknown at {self.endpoints[i]}: {e}",
                                        endpoint=self.endpoints[i], indeterminate=True) from None
                continue
            self.current = i
            return data
        raise EtcdError(f"{path}: no etcd member answered: " + "; ".join(failures))

    # --- KV ----------------------------------------------------------------------------------
    async def range(self, key: bytes | str, *, prefix: bool = False, serializable: bool = False,
                    revision: int = 0, limit: int = 0) -> RangeResult:
        d = await self.call("/v3/kv/range", range_request(key, prefix=prefix, serializable=serializable,
                                                          revision=revision, limit=limit),
                            write=False, needs_leader=not serializable)
        h = d.get("header") or {}
        return RangeResult(tuple(KV.from_json(k) for k in d.get("kvs") or ()),
                           int(h.get("revision") or 0), int(d.get("count") or 0), int(h.get("member_id") or 0))

    async def get(self, key: bytes | str, *, serializable: bool = False) -> KV | None:
        r = await self.range(key, serializable=serializable)
        return r.kvs[0] if r.kvs else None

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Returns the revision of the write."""
        d = await self.call("/v3/kv/put", put_request(key, value, lease=lease), write=True)
        return int((d.get("header") or {}).get("revision") or 0)

    async def delete(self, key: bytes | str, *, prefix: bool = False) -> int:
        """Returns how many keys were deleted."""
        d = await self.call("/v3/kv/deleterange", delete_request(key, prefix=prefix), write=True)
        return int(d.get("deleted") or 0)

    async def txn(self, compares: Sequence[dict], success: Sequence[dict], failure: Sequence[dict] = ()) -> dict:
        """Raw txn (see :func:`testbed.mesh.etcd.wire.compare`); the response dict has ``succeeded``."""
        d = await self.call("/v3/kv/txn", txn_request(compares, success, failure), write=True)
        d["succeeded"] = bool(d.get("succeeded"))
        return d

    async def cas(self, key: bytes | str, expected: bytes | str | None, value: bytes | str,
                  *, lease: int = 0) -> bool:
        """Compare-and-set by value; ``expected=None`` means "only if the key is absent"."""
        c = compare(key, "CREATE", 0) if expected is None else compare(key, "VALUE", expected)
        return (await self.txn([c], [{"request_put": put_request(key, value, lease=lease)}]))["succeeded"]

    async def cas_revision(self, key: bytes | str, mod_revision: int, value: bytes | str,
                           *, lease: int = 0) -> bool:
        """Compare-and-set by the key's mod_revision (0: the key is absent)."""
        c = compare(key, "MOD", mod_revision)
        return (await self.txn([c], [{"request_put": put_request(key, value, lease=lease)}]))["succeeded"]

    # --- leases ------------------------------------------------------------------------------
    async def lease_grant(self, ttl_s: int) -> Lease:
        d = await self.call("/v3/lease/grant", {"TTL": int(ttl_s)}, write=True)
        if d.get("error"):
            raise EtcdError(f"lease grant failed: {d['error']}")
        return Lease(int(d["ID"]), int(d.get("TTL") or 0))

    async def lease_keepalive(self, lease_id: int) -> int:
        """One keep-alive; returns the remaining TTL, 0 if the lease is gone (expired/revoked)."""
        d = await self.call("/v3/lease/keepalive", {"ID": str(lease_id)}, write=False)
        return int((d.get("result") or d).get("TTL") or 0)

    async def lease_revoke(self, lease_id: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease_id)}, write=True)

    # --- cluster -----------------------------------------------------------------------------
    async def status(self, endpoint: str | None = None) -> MemberStatus:
        """Status of ``endpoint`` (no failover) or of whichever member answers."""
        if endpoint is None:
            return MemberStatus.from_json(await self.call("/v3/maintenance/status", {}, write=False,
                                                          needs_leader=False))
        try:
            return MemberStatus.from_json(await self._post_once(endpoint.rstrip("/") + "/v3/maintenance/status",
                                                                {}, False))
        except _Retry as e:
            raise EtcdError(f"{endpoint}: {e}", endpoint=endpoint) from None

    async def members(self) -> list[dict[str, Any]]:
        """``[{"ID", "name", "peerURLs", "clientURLs"}, ...]`` as etcd reports them."""
        d = await self.call("/v3/cluster/member/list", {}, write=False, needs_leader=False)
        return list(d.get("members") or ())

    def watch(self, key: bytes | str, *, prefix: bool = True, start_revision: int = 0,
              prev_kv: bool = False, idle_timeout_s: float | None = None) -> "Watch":
        return Watch(self, watch_request(key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv),
                     idle_timeout_s)


class Watch:
    """``async with client.watch(prefix, start_revision=r) as w: async for ev in w: ...``

    Always sent with ``hasleader``: on a member that loses its leader etcd cancels the
    stream (after a few election timeouts) and the iterator raises :class:`WatchError`;
    it also raises when the server cancels the watch, the revision was compacted
    (:class:`WatchCompacted`) or the stream ends. With ``idle_timeout_s`` it raises when
    nothing (not even a progress notification, sent every ``watch_progress_ms`` by
    clusters started from :class:`~testbed.mesh.etcd.cluster.EtcdCluster`) arrives for that long:
    a member cut off from this client, or paused. It never ends silently."""

    def __init__(self, client: EtcdClient, request: dict, idle_timeout_s: float | None = None):
        self.client, self.request, self.idle_timeout_s = client, request, idle_timeout_s
        self.revision = 0            # latest header revision seen
        self.endpoint = ""
        self._resp: aiohttp.ClientResponse | None = None
        self._pending: list[WatchEvent] = []
        self._buf = b""

    async def __aenter__(self) -> "Watch":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    async def start(self) -> None:
        """Open the stream on the first member that confirms ``created``."""
        c, failures, first = self.client, [], self.client.current
        for attempt in range(len(c.endpoints)):
            i = (first + attempt) % len(c.endpoints)
            try:
                async with asyncio.timeout(c.timeout_s):
                    await self._open(c.endpoints[i])
                c.current = i
                return
            except (asyncio.TimeoutError, aiohttp.ClientError, WatchError) as e:
                self.close()
                failures.append(f"{c.endpoints[i]}: {type(e).__name__}: {e}")
        raise WatchError("watch: no etcd member accepted it: " + "; ".join(failures))

    async def _open(self, endpoint: str) -> None:
        self._pending, self._buf = [], b""
        self._resp = await self.client.session.post(
            endpoint + "/v3/watch", json=self.request, headers=HASLEADER,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.client.timeout_s))
        if self._resp.status != 200:
            raise WatchError(f"HTTP {self._resp.status}: {(await self._resp.text())[:200]}")
        self.endpoint = endpoint
        while True:
            rev, events, created = parse_watch_message(await self._line())
            self.revision = max(self.revision, rev)
            self._pending.extend(events)
            if created:
                return

    async def _line(self) -> dict:
        assert self._resp is not None
        while True:
            while b"\n" not in self._buf:
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(self.idle_timeout_s):
                        chunk = await self._resp.content.readany()
                except TimeoutError:
                    raise WatchError(f"watch stream from {self.endpoint} silent for "
                                     f"{self.idle_timeout_s}s") from None
                if not chunk:
                    raise WatchError(f"watch stream from {self.endpoint} ended")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                break
        try:
            return json.loads(line)
        except ValueError:
            raise WatchError(f"watch stream sent a non-JSON line: {line[:200]!r}") from None

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._resp is None:
            raise WatchError("watch is closed")
        while not self._pending:
            try:
                rev, events, _ = parse_watch_message(await self._line())
            except WatchCompacted:
                raise
            except (WatchError, aiohttp.ClientError) as e:
                c = self.client          # this member failed us: next calls start elsewhere
                if c.endpoints[c.current] == self.endpoint:
                    c.current = (c.current + 1) % len(c.endpoints)
                if isinstance(e, WatchError):
                    raise
                raise WatchError(f"watch stream from {self.endpoint} failed: {e}") from None
            self.revision = max(self.revision, rev)
            self._pending.extend(events)
        return self._pending.pop(0)
