"""The xDS client: REST-JSON long polls to the control plane, applied to the running server.

``XdsClient(server)`` reads ``bootstrap.dynamic_resources`` (``cds_config`` / ``lds_config``
with ``api_type: REST``), then ``await client.start()`` fetches CDS, then EDS for every EDS
cluster, then LDS, then RDS for every ``rds.route_config_name`` -- the order of Envoy's init
manager -- waiting at most ``initial_fetch_timeout`` for the first answers.  Each
subscription is one task polling ``POST <source cluster>/v3/discovery:<type>``; see
:mod:`proxy.xds.protocol` for the ACK/NACK rules and validation.

The control plane is out of the data path: when it is unreachable or answers errors, the
proxy keeps serving its last good config and retries with exponential backoff
(``refresh_delay`` doubling up to ``MAX_BACKOFF_S``).  ``/stats`` shows Envoy's
``cluster_manager.cds.*``, ``listener_manager.lds.*``, ``http.<prefix>.rds.<name>.*`` and
``cluster.<name>.update_*`` plus ``control_plane.connected`` (0/1: did the last exchange
succeed) and ``control_plane.seconds_since_last_update`` (since the last answer, update or
304, from the control plane; a long poll is held up to the server's hold time, so while
connected it stays below that hold time).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from proxy import __version__
from proxy.config.listener import HcmSpec, ListenerSpec
from proxy.config.reader import ConfigError
from proxy.errors import StartupError
from proxy.running import RunningServer
from proxy.http.client import HttpClient
from proxy.http.codec import ProtocolError
from proxy.xds.protocol import (CLUSTER, ENDPOINT, LISTENER, PATHS, ROUTE, ClusterUpdate, ConfigSource, ListenerUpdate,
                                Subscription, UpdateStats, XdsError, decode_response, parse_dynamic_resources,
                                validate_assignment, validate_clusters, validate_listeners, validate_route_config)

if TYPE_CHECKING:
    from proxy.config.route import RouteConfigSpec

__all__ = ["XdsClient", "XdsTarget", "HttpTransport", "Transport", "ApplyError", "MAX_BACKOFF_S"]
log = logging.getLogger("proxy.xds.client")
MAX_BACKOFF_S = 1.0
SHORT = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}


def _rds_name(spec: ListenerSpec) -> str | None:
    f = spec.filter
    return f.rds_route_config_name if isinstance(f, HcmSpec) else None


class ApplyError(Exception):
    """A validated update could not be applied (e.g. a listener port is taken); rolled back."""


class _ListenerManager(Protocol):
    @property
    def listeners(self) -> dict[str, Any]:
        """name -> listener with .spec (a ListenerSpec)"""
        ...

    async def add_or_update_listener(self, spec: ListenerSpec) -> None: ...

    async def remove_listener(self, name: str) -> bool: ...

    def replace_route_config(self, route_config_spec: RouteConfigSpec, listener_name: str | None = None) -> int: ...


class XdsTarget(RunningServer, Protocol):
    """What the xDS client reads and drives; :class:`proxy.server.Server` provides it."""

    @property
    def listener_manager(self) -> _ListenerManager: ...


class Transport(Protocol):
    async def post(self, cluster: str, path: str, body: dict, timeout_s: float) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None); raises OSError/TimeoutError when unreachable."""


class HttpTransport:
    """POSTs to a host of the bootstrap's (static) xDS cluster; one connection per request."""

    def __init__(self, cluster_manager):
        self.cm = cluster_manager

    async def post(self, cluster: str, path: str, body: dict, timeout_s: float) -> tuple[int, Any]:
        c = self.cm.get(cluster)
        host = c.choose(None) if c is not None else None
        if host is None:
            raise OSError(f"xDS cluster {cluster!r} has no usable host")
        client = HttpClient(host.address, host.port)
        try:
            await asyncio.wait_for(client.connect(), timeout_s)
            r = await client.request("POST", path, [("host", cluster), ("content-type", "application/json")],
                                     json.dumps(body).encode(), timeout=timeout_s)
        finally:
            await client.close()
        return r.status, (json.loads(r.body) if r.status == 200 else r.body.decode("utf-8", "replace")[:200])


@dataclass
class _Sub:
    """A running subscription: its state machine, where it polls, and what it applies."""

    state: Subscription
    source: ConfigSource
    handle: Callable[[tuple[dict, ...]], Awaitable[None]]   # validate all, then apply (raises)
    label: str
    task: asyncio.Task | None = None
    key: Any = None


class XdsClient:
    def __init__(self, server: XdsTarget, transport: Transport | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.server = server
        self.cm = server.cluster_manager
        self.lm = server.listener_manager
        self.transport = transport or HttpTransport(self.cm)
        self.clock = clock
        b = server.bootstrap
        try:
            self.cds_source, self.lds_source = parse_dynamic_resources(b.dynamic_resources or {})
        except ConfigError as e:
            raise StartupError(str(e)) from None
        self.node = {"id": b.node.id, "cluster": b.node.cluster, "metadata": dict(b.node.metadata or {}),
                     "user_agent_name": "minimesh-proxy", "user_agent_version": __version__}
        self.static_clusters = frozenset(c.name for c in b.clusters)
        self.static_listeners = frozenset(lst.name for lst in b.listeners)
        self.cds: _Sub | None = None
        self.lds: _Sub | None = None
        self.eds: dict[str, _Sub] = {}          # cluster name -> subscription
        self.rds: dict[str, _Sub] = {}          # route config name -> subscription
        self.eds_stats: dict[str, UpdateStats] = {}
        self.rds_stats: dict[str, UpdateStats] = {}
        self.routes: dict = {}                  # route config name -> RouteConfigSpec
        self.dynamic_clusters: set[str] = set()
        self.dynamic_listeners: set[str] = set()
        self.warming: dict[str, ListenerSpec] = {}   # new listeners waiting for their RDS routes
        self._timers: list = []                      # warming timeouts (handles and tasks)
        self.connected = False
        self.last_update = clock()
        # subscription label ("cds", "lds", "eds NAME", "rds NAME") -> (version, wall time,
        # resources) of its last accepted update, for the admin's /config_dump
        self.accepted: dict[str, tuple[str, float, tuple[dict, ...]]] = {}
        server.stats.gauge_sources.append(self.stat_items)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start CDS (then EDS), then LDS (then RDS); wait for the first answers, like Envoy's
        init manager, at most each source's ``initial_fetch_timeout``."""
        if self.cds_source is not None:
            self.cds = self._spawn(Subscription(CLUSTER), self.cds_source, self._on_clusters, "cds")
            await self._initialized(lambda: [self.cds] + list(self.eds.values()),
                                    self.cds_source.initial_fetch_timeout_s)
        if self.lds_source is not None:
            self.lds = self._spawn(Subscription(LISTENER), self.lds_source, self._on_listeners, "lds")
            await self._initialized(lambda: [self.lds] + list(self.rds.values()),
                                    self.lds_source.initial_fetch_timeout_s)

    async def _initialized(self, subs: Callable[[], list], timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not all(s.state.responded for s in subs()):
            if loop.time() >= deadline:
                log.warning("xDS: initial fetch timed out after %.1fs; serving what arrived", timeout_s)
                return
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        subs = [s for s in [self.cds, self.lds, *self.eds.values(), *self.rds.values()] if s is not None]
        for s in subs:
            if s.task is not None:
                s.task.cancel()
        for t in self._timers:
            t.cancel()
        await asyncio.gather(*(s.task for s in subs if s.task is not None), return_exceptions=True)

    def _spawn(self, state: Subscription, source: ConfigSource, handle, label: str, key: Any = None) -> _Sub:
        sub = _Sub(state, source, handle, label, key=key)
        sub.task = asyncio.get_event_loop().create_task(self._poll(sub))
        return sub

    # ------------------------------------------------------------ the poll loop
    async def _poll(self, sub: _Sub) -> None:
        st, src = sub.state, sub.source
        backoff = max(src.refresh_delay_s, 0.05)
        while True:
            req = st.request(self.node)
            self._sync_cluster_stats(sub)
            try:
                status, body = await self.transport.post(src.cluster, PATHS[st.type_url], req, src.request_timeout_s)
            except (OSError, asyncio.TimeoutError, ProtocolError, ValueError) as e:
                status, body = 0, f"{type(e).__name__}: {e}"
            if status in (200, 304):
                self._contact(True)
                backoff = max(src.refresh_delay_s, 0.05)
                if status == 304:
                    st.not_modified()
                    delay = src.refresh_delay_s * (1 + random.random())     # Envoy's jitter
                else:
                    await self._update(sub, body)
                    delay = 0.0              # ACK/NACK at once; the server holds the next poll
            else:
                self._contact(False)
                st.failed(f"HTTP {status}: {body}" if status else str(body))
                if st.stats.update_failure == 1 or st.stats.update_failure % 50 == 0:
                    log.warning("xDS %s: control plane unreachable or failing (%s); keeping version %r",
                                sub.label, st.last_error, st.version_info)
                delay = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            self._sync_cluster_stats(sub)
            await asyncio.sleep(delay)

    async def _update(self, sub: _Sub, body: Any) -> None:
        st = sub.state
        nonce = body.get("nonce", "") if isinstance(body, dict) else ""
        try:
            resp = decode_response(body, st.type_url)
            await sub.handle(resp.resources)
        except (XdsError, ConfigError, ApplyError) as e:
            st.rejected(nonce, str(e))
            log.warning("xDS %s: rejected update (nonce %s), keeping version %r: %s",
                        sub.label, nonce, st.version_info, e)
            if st.type_url == ROUTE and not st.version_info:   # like Envoy: a failed first RDS
                await self._activate(lambda s: _rds_name(s) == st.names[0])   # ends warming
            return
        st.accepted(resp.version_info, resp.nonce, empty=not resp.resources)
        self.accepted[sub.label] = (resp.version_info, time.time(), tuple(resp.resources))   # /config_dump
        log.info("xDS %s: applied version %s (%d resources)", sub.label, resp.version_info, len(resp.resources))

    def _contact(self, ok: bool) -> None:
        if ok:
            self.last_update = self.clock()
            if not self.connected:
                log.info("xDS: connected to the control plane")
        elif self.connected:
            log.warning("xDS: lost the control plane; serving the last good config")
        self.connected = ok

    # ------------------------------------------------------------ CDS / EDS
    async def _on_clusters(self, resources: tuple[dict, ...]) -> None:
        upd = validate_clusters(resources, self.static_clusters)
        prev = {n: self.cm.clusters[n].spec for n in self.dynamic_clusters if n in self.cm.clusters}
        try:
            self._apply_clusters(upd)
        except Exception as e:  # roll back whatever failed, then NACK
            for spec in upd.clusters:
                if spec.name not in prev:
                    self.cm.remove_cluster(spec.name)
            for spec in prev.values():
                self.cm.add_or_update_cluster(spec)
            self.dynamic_clusters = set(prev)
            raise ApplyError(f"applying clusters failed, rolled back: {e}") from e
        self._reconcile_eds(upd)

    def _apply_clusters(self, upd: ClusterUpdate) -> None:
        new = {s.name for s in upd.clusters}
        for spec in upd.clusters:
            self.cm.add_or_update_cluster(spec)
        for name in self.dynamic_clusters - new:
            self.cm.remove_cluster(name)      # pools drain: in-flight requests finish
            log.info("xDS cds: removed cluster %s", name)
        self.dynamic_clusters = new

    def _reconcile_eds(self, upd: ClusterUpdate) -> None:
        for name in list(self.eds):
            if upd.eds.get(name) != self.eds[name].key:
                sub = self.eds.pop(name)
                self.accepted.pop(sub.label, None)
                if sub.task is not None:
                    sub.task.cancel()
        for name, (resource, source) in upd.eds.items():
            if name not in self.eds:
                st = Subscription(ENDPOINT, (resource,), stats=self.eds_stats.setdefault(name, UpdateStats()))
                self.eds[name] = self._spawn(st, source, self._eds_handler(name, resource), f"eds {name}",
                                             key=(resource, source))

    def _eds_handler(self, cluster: str, resource: str):
        async def handle(resources: tuple[dict, ...]) -> None:
            eps = validate_assignment(resources, resource)
            if eps is None:
                return                                    # empty: keep the endpoints (Envoy)
            if self.cm.get(cluster) is None:
                raise ApplyError(f"cluster {cluster!r} is not (or no longer) defined")
            self.cm.update_endpoints(cluster, eps)
        return handle

    def _sync_cluster_stats(self, sub: _Sub) -> None:
        """EDS counters live in the cluster's own stats (cluster.<name>.update_attempt ...)."""
        if sub.state.type_url != ENDPOINT:
            return
        name = sub.label[4:]
        cs, st = self.server.stats.cluster(name), sub.state.stats
        cs.update_attempt, cs.update_success, cs.update_failure = \
            st.update_attempt, st.update_success, st.update_failure

    # ------------------------------------------------------------ LDS / RDS
    async def _on_listeners(self, resources: tuple[dict, ...]) -> None:
        upd = validate_listeners(resources, self.static_listeners)
        lm = self.lm
        prev = {n: lm.listeners[n].spec for n in self.dynamic_listeners if n in lm.listeners}
        prev_warming = dict(self.warming)
        try:
            await self._apply_listeners(upd)
        except Exception as e:  # e.g. StartupError (port taken): roll back, NACK
            for spec in upd.listeners:
                if spec.name not in prev:
                    await lm.remove_listener(spec.name)
            for spec in prev.values():
                try:
                    await lm.add_or_update_listener(spec)
                    self._install_routes(spec)
                except Exception:  # keep restoring the others
                    log.exception("xDS lds: could not restore listener %s", spec.name)
            self.warming = prev_warming
            self.dynamic_listeners = set(prev) | set(prev_warming)
            raise ApplyError(f"applying listeners failed, rolled back: {e}") from e
        self._reconcile_rds(upd)

    async def _apply_listeners(self, upd: ListenerUpdate) -> None:
        new = {s.name for s in upd.listeners}
        for name in self.dynamic_listeners - new:
            self.warming.pop(name, None)
            if await self.lm.remove_listener(name):
                log.info("xDS lds: removed listener %s", name)
        for spec in upd.listeners:
            rds = _rds_name(spec)
            if spec.name not in self.lm.listeners and rds is not None and rds not in self.routes:
                # Envoy's listener warming: a new listener opens once its routes arrived
                self.warming[spec.name] = spec
                self._timers.append(asyncio.get_event_loop().call_later(
                    upd.rds[rds].initial_fetch_timeout_s, self._warm_timeout, spec))
                continue
            self.warming.pop(spec.name, None)
            await self.lm.add_or_update_listener(spec)
            self._install_routes(spec)
        self.dynamic_listeners = new

    async def _activate(self, which: Callable[[ListenerSpec], bool]) -> None:
        """Open the warming listeners ``which`` selects (their routes arrived, or time is up)."""
        for spec in [s for s in self.warming.values() if which(s)]:
            del self.warming[spec.name]
            try:
                await self.lm.add_or_update_listener(spec)
                self._install_routes(spec)
            except Exception as e:  # e.g. the port got taken meanwhile
                log.error("xDS lds: listener %s failed to open after warming: %s", spec.name, e)
                self.dynamic_listeners.discard(spec.name)

    def _warm_timeout(self, spec: ListenerSpec) -> None:
        if self.warming.get(spec.name) is spec:
            log.warning("xDS lds: routes of listener %s did not arrive in time; opening it anyway", spec.name)
            self._timers.append(asyncio.get_event_loop().create_task(self._activate(lambda s: s is spec)))

    def _install_routes(self, spec: ListenerSpec) -> None:
        rds = _rds_name(spec)
        if rds in self.routes:
            self.lm.replace_route_config(self.routes[rds], listener_name=spec.name)

    def _reconcile_rds(self, upd: ListenerUpdate) -> None:
        for name in list(self.rds):
            if upd.rds.get(name) != self.rds[name].source:
                sub = self.rds.pop(name)
                self.accepted.pop(sub.label, None)
                if sub.task is not None:
                    sub.task.cancel()
                self.routes.pop(name, None)
        for name, source in upd.rds.items():
            if name not in self.rds:
                st = Subscription(ROUTE, (name,), stats=self.rds_stats.setdefault(name, UpdateStats()))
                self.rds[name] = self._spawn(st, source, self._rds_handler(name), f"rds {name}")

    def _rds_handler(self, name: str):
        async def handle(resources: tuple[dict, ...]) -> None:
            rc = validate_route_config(resources, name)
            if rc is None:
                return
            self.routes[name] = rc
            self.lm.replace_route_config(rc)
            await self._activate(lambda s: _rds_name(s) == name)
        return handle

    # ------------------------------------------------------------ stats
    def _rds_prefixes(self, name: str) -> list[str]:
        out = []
        for lst in self.lm.listeners.values():
            f = lst.spec.filter
            if isinstance(f, HcmSpec) and f.rds_route_config_name == name and f.stat_prefix not in out:
                out.append(f.stat_prefix)
        return out

    def stat_items(self):
        """(name, value, tags) for Stats.gauge_sources."""
        if self.cds is not None:
            for n, v in self.cds.state.stats.items("cluster_manager.cds"):
                yield n, v, {}
        if self.lds is not None:
            for n, v in self.lds.state.stats.items("listener_manager.lds"):
                yield n, v, {}
        for name, st in self.rds_stats.items():
            for prefix in self._rds_prefixes(name):
                for n, v in st.items(f"http.{prefix}.rds.{name}"):
                    yield n, v, {}
        for name, st in self.eds_stats.items():
            for k in ("update_rejected", "update_empty", "version"):
                yield f"cluster.{name}.{k}", getattr(st, k), {"envoy_cluster_name": name}
        yield "control_plane.connected", int(self.connected), {}
        yield "control_plane.seconds_since_last_update", round(self.clock() - self.last_update, 3), {}

    def config_dump(self) -> dict:
        """What the xDS client holds: versions, route configs, last errors (for debugging)."""
        subs = [s for s in [self.cds, self.lds, *self.eds.values(), *self.rds.values()] if s is not None]
        return {"connected": self.connected,
                "subscriptions": [{"type": SHORT[s.state.type_url], "names": list(s.state.names),
                                   "version_info": s.state.version_info, "last_error": s.state.last_error}
                                  for s in subs],
                "route_configs": {n: rc.raw for n, rc in self.routes.items()}}
