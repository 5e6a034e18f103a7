"""The admin server (only on the address the bootstrap's ``admin`` gives).

Endpoints follow Envoy's: /stats, /stats/prometheus, /clusters, /config_dump, /ready,
/server_info, /listeners, /quitquitquit (POST), /healthcheck/fail and /healthcheck/ok (POST).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Collection, Protocol
from urllib.parse import parse_qs, urlsplit

from proxy import __version__
from proxy.config_dump import config_dump
from proxy.errors import StartupError
from proxy.running import RunningServer
from proxy.http.codec import END, ProtocolError, RequestHead, ServerCodec, encode_response_head

__all__ = ["AdminServer", "AdminTarget"]

_TEXT = b"text/plain; charset=UTF-8"
_JSON = b"application/json"


class _Listeners(Protocol):
    @property
    def listeners(self) -> dict[str, Any]:
        """name -> listener with .spec and .server (an asyncio server)"""
        ...


class AdminTarget(RunningServer, Protocol):
    """What the admin endpoints read and control; :class:`proxy.server.Server` provides it."""

    @property
    def listener_manager(self) -> _Listeners: ...

    @property
    def connections(self) -> Collection[object]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def start_time(self) -> float: ...

    @property
    def config_path(self) -> str: ...

    def request_stop(self) -> None: ...


class _AdminConn(asyncio.Protocol):
    def __init__(self, admin: "AdminServer"):
        self.admin = admin
        self.codec = ServerCodec()
        self.head: RequestHead | None = None
        self.transport: asyncio.Transport | None = None      # set by connection_made

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.receive_data(data)
        except ProtocolError as e:
            self._send(e.status, b"bad request\n", _TEXT, close=True)
            return
        for ev in events:
            if type(ev) is RequestHead:
                self.head = ev
            elif ev is END and self.head is not None:
                head, self.head = self.head, None
                try:
                    status, body, ctype = self.admin.handle(head.method.decode(), head.target.decode("latin-1"))
                except Exception as e:  # an admin bug must not kill the proxy
                    status, body, ctype = 500, f"admin error: {e}\n".encode(), _TEXT
                self._send(status, body, ctype, close=not head.keep_alive)

    def _send(self, status: int, body: bytes, ctype: bytes, close: bool) -> None:
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body)),
                   (b"cache-control", b"no-cache, max-age=0"), (b"x-content-type-options", b"nosniff")]
        if close:
            headers.append((b"connection", b"close"))
        t = self.transport
        assert t is not None          # answers go out while handling received data
        t.write(encode_response_head(status, headers) + body)
        if close:
            t.close()


class AdminServer:
    def __init__(self, server: AdminTarget):
        self.server = server
        spec = server.bootstrap.admin
        assert spec is not None, "the bootstrap has no admin section"
        self.spec = spec
        self._srv: asyncio.Server | None = None
        self.health_failed = False

    async def start(self) -> None:
        try:
            self._srv = await asyncio.get_event_loop().create_server(
                lambda: _AdminConn(self), self.spec.address, self.spec.port, reuse_address=True)
        except OSError as e:
            raise StartupError(f"admin: cannot bind '{self.spec.address}:{self.spec.port}': {e.strerror or e}") \
                from None

    @property
    def port(self) -> int:
        assert self._srv is not None
        return self._srv.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._srv is not None:
            self._srv.close()

    # --- endpoints ------------------------------------------------------------------------------
    def handle(self, method: str, target: str) -> tuple[int, bytes, bytes]:
        u = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        path = u.path.rstrip("/") or "/"
        mutating = {"/quitquitquit", "/healthcheck/fail", "/healthcheck/ok"}
        if path in mutating and method != "POST":
            return 405, f"Method {method} not allowed, POST required.".encode(), _TEXT
        handler = {
            "/": self._index, "/stats": self._stats, "/stats/prometheus": self._prometheus,
            "/clusters": self._clusters, "/config_dump": self._config_dump, "/ready": self._ready,
            "/server_info": self._server_info, "/listeners": self._listeners, "/quitquitquit": self._quit,
            "/healthcheck/fail": self._hc_fail, "/healthcheck/ok": self._hc_ok,
        }.get(path)
        if handler is None:
            return 404, b"invalid path. admin commands are: /stats /stats/prometheus /clusters /config_dump " \
                        b"/ready /server_info /listeners /quitquitquit\n", _TEXT
        return handler(q)

    def _index(self, q) -> tuple[int, bytes, bytes]:
        return 200, b"admin commands are:\n  /clusters\n  /config_dump\n  /listeners\n  /quitquitquit\n" \
                    b"  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n", _TEXT

    def _stats(self, q) -> tuple[int, bytes, bytes]:
        stats = self.server.stats
        rx = re.compile(q["filter"]) if q.get("filter") else None
        items = [(n, v) for n, _, v, _ in stats.items() if rx is None or rx.search(n)]
        items += [(n, v) for n, v in self._server_stats() if rx is None or rx.search(n)]
        items.sort()
        if q.get("format") == "json":
            return 200, json.dumps({"stats": [{"name": n, "value": v} for n, v in items]}).encode(), _JSON
        return 200, "".join(f"{n}: {v}\n" for n, v in items).encode(), _TEXT

    def _server_stats(self):
        s = self.server
        yield "server.live", 1 if s.ready and not self.health_failed else 0
        yield "server.uptime", int(time.time() - s.start_time)
        yield "server.concurrency", 1
        yield "server.total_connections", len(s.connections)

    def _prometheus(self, q) -> tuple[int, bytes, bytes]:
        body = self.server.stats.render_prometheus()
        return 200, body, b"text/plain; version=0.0.4; charset=utf-8"

    def _clusters(self, q) -> tuple[int, bytes, bytes]:
        lines = []
        out_json = []
        for name, c in self.server.cluster_manager.clusters.items():
            th = c.spec.thresholds
            for prio in ("default_priority", "high_priority"):
                lines += [f"{name}::{prio}::max_connections::{th.max_connections}",
                          f"{name}::{prio}::max_pending_requests::{th.max_pending_requests}",
                          f"{name}::{prio}::max_requests::{th.max_requests}",
                          f"{name}::{prio}::max_retries::{th.max_retries}"]
            lines.append(f"{name}::added_via_api::{'false' if c.spec in self.server.bootstrap.clusters else 'true'}")
            hosts = []
            for h in c.hosts:
                a = f"{name}::{h.address}:{h.port}"
                flags = []
                if h.hc_failed:
                    flags.append("/failed_active_hc")
                if h.ejected:
                    flags.append("/failed_outlier_check")
                if not h.eds_healthy:
                    flags.append("/failed_eds_health")
                health = "".join(flags) or "healthy"
                lines += [f"{a}::cx_active::{h.cx_active}", f"{a}::cx_connect_fail::{h.cx_connect_fail}",
                          f"{a}::rq_active::{h.rq_active}", f"{a}::rq_error::{h.rq_error}",
                          f"{a}::rq_success::{h.rq_success}", f"{a}::rq_total::{h.rq_total}",
                          f"{a}::hostname::{h.hostname}", f"{a}::health_flags::{health}",
                          f"{a}::weight::{h.weight}", f"{a}::priority::{h.priority}",
                          f"{a}::outlier_detection_ejections::{h.ejections}"]
                hosts.append({"address": {"socket_address": {"address": h.address, "port_value": h.port}},
                              "hostname": h.hostname, "weight": h.weight, "priority": h.priority,
                              "health_status": {"failed_active_health_check": h.hc_failed,
                                                "failed_outlier_check": h.ejected,
                                                "eds_health_status": "HEALTHY" if h.eds_healthy else "UNHEALTHY"},
                              "stats": [{"name": "rq_total", "value": h.rq_total},
                                        {"name": "rq_error", "value": h.rq_error},
                                        {"name": "cx_active", "value": h.cx_active}]})
            out_json.append({"name": name, "host_statuses": hosts})
        if q.get("format") == "json":
            return 200, json.dumps({"cluster_statuses": out_json}, indent=2).encode(), _JSON
        return 200, ("\n".join(lines) + "\n").encode(), _TEXT

    def _config_dump(self, q) -> tuple[int, bytes, bytes]:
        dump = config_dump(self.server, include_eds="include_eds" in q)
        return 200, json.dumps(dump, indent=2, default=str).encode(), _JSON

    def _ready(self, q) -> tuple[int, bytes, bytes]:
        if self.server.ready and not self.health_failed:
            return 200, b"LIVE\n", _TEXT
        return 503, (b"DRAINING\n" if self.health_failed else b"PRE_INITIALIZING\n"), _TEXT

    def _server_info(self, q) -> tuple[int, bytes, bytes]:
        s = self.server
        n = s.bootstrap.node
        info = {"version": f"minimesh-proxy/{__version__}",
                "state": "LIVE" if s.ready else "PRE_INITIALIZING",
                "uptime_current_epoch": f"{int(time.time() - s.start_time)}s",
                "uptime_all_epochs": f"{int(time.time() - s.start_time)}s",
                "node": {"id": n.id, "cluster": n.cluster, "metadata": n.metadata},
                "command_line_options": {"concurrency": 1, "config_path": s.config_path}}
        return 200, json.dumps(info, indent=2).encode(), _JSON

    def _listeners(self, q) -> tuple[int, bytes, bytes]:
        lm = self.server.listener_manager
        lines = []
        for name, lst in lm.listeners.items():
            port = lst.server.sockets[0].getsockname()[1] if lst.server.sockets else lst.spec.port
            lines.append(f"{name}::{lst.spec.address}:{port}")
        return 200, ("\n".join(lines) + "\n").encode(), _TEXT

    def _quit(self, q) -> tuple[int, bytes, bytes]:
        asyncio.get_event_loop().call_soon(self.server.request_stop)
        return 200, b"OK\n", _TEXT

    def _hc_fail(self, q) -> tuple[int, bytes, bytes]:
        self.health_failed = True
        return 200, b"OK\n", _TEXT

    def _hc_ok(self, q) -> tuple[int, bytes, bytes]:
        self.health_failed = False
        return 200, b"OK\n", _TEXT
