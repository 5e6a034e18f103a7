"""``envoy.filters.http.fault``: inject delays and aborts by percentage or by request header.

The filter's config may be restricted to requests matching ``headers`` (all must match) or
bound to ``upstream_cluster``.  A route's (or virtual host's) ``typed_per_filter_config``
entry for ``envoy.filters.http.fault`` replaces the filter's config for that route, which is
how Istio (and minimesh's Pilot) delivers a VirtualService's fault injection."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Callable

import proxy.filters.factory as registry
from proxy.config.reader import ConfigError, Obj, percent
from proxy.config.route import parse_header_match
from proxy.filters.base import CONTINUE, STOP_ITERATION, HttpFilter
from proxy.http.route_table import header_predicate

__all__ = ["FaultConfig", "FaultFilter"]


@dataclass(frozen=True)
class FaultConfig:
    delay_s: float | None = None          # fixed delay
    delay_percent: float = 0.0
    header_delay: bool = False
    abort_status: int | None = None
    abort_percent: float = 0.0
    header_abort: bool = False
    delay_percent_set: bool = False
    abort_percent_set: bool = False
    max_active_faults: int | None = None
    headers: tuple = ()                   # HeaderMatch specs (all must match)
    upstream_cluster: str | None = None
    matchers: tuple[Callable[[list], bool], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matchers", tuple(header_predicate(h) for h in self.headers))


def _parse(o: Obj) -> FaultConfig:
    delay_s = None
    dp, dps, hd = 0.0, False, False
    d = o.obj("delay")
    if d is not None:
        d.take("type", "FIXED", str, ("FIXED",))
        kind = d.one_of(("fixed_delay", "header_delay"))
        if kind == "fixed_delay":
            delay_s = d.duration("fixed_delay")
        else:
            hdo = d.obj("header_delay")
            assert hdo is not None
            hdo.done()
            hd = True
        if d.has("percentage"):
            dp, dps = percent(d.take("percentage"), d.sub("percentage")), True
        elif d.has("percent"):
            dp, dps = float(d.take("percent", kind=int)), True
        d.done()
    status, ap, aps, ha = None, 0.0, False, False
    a = o.obj("abort")
    if a is not None:
        kind = a.one_of(("http_status", "header_abort", "grpc_status"))
        if kind == "grpc_status":
            raise ConfigError(a.sub("grpc_status"), "gRPC aborts are not supported (HTTP/1.1 only)")
        if kind == "http_status":
            status = a.take("http_status", kind=int)
            if not 200 <= status < 600:
                raise ConfigError(a.sub("http_status"), f"must be 200..599, got {status}")
        else:
            ho = a.obj("header_abort")
            assert ho is not None
            ho.done()
            ha = True
        if a.has("percentage"):
            ap, aps = percent(a.take("percentage"), a.sub("percentage")), True
        elif a.has("percent"):
            ap, aps = float(a.take("percent", kind=int)), True
        a.done()
    maf = o.take("max_active_faults", None, int)
    headers = tuple(parse_header_match(h) for h in o.objs("headers"))
    upstream = o.take("upstream_cluster", None, str)
    o.done()
    return FaultConfig(delay_s, dp, hd, status, ap, ha, dps, aps, maf, headers, upstream)


class _State:
    active = 0


def _factory(config: FaultConfig, ctx):
    loop = asyncio.get_event_loop()
    state = _State()
    return lambda: FaultFilter(config, loop, state)


def _header(headers: list, name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _roll(p: float) -> bool:
    return p >= 100.0 or random.random() * 100.0 < p


class FaultFilter(HttpFilter):
    __slots__ = ("config", "loop", "state", "timer", "counted", "stream")

    def __init__(self, config: FaultConfig, loop, state: _State):
        self.config = config
        self.loop = loop
        self.state = state
        self.timer = None
        self.counted = False

    def _percent(self, headers: list, header: bytes, configured: float, is_set: bool) -> float:
        v = _header(headers, header)
        p = 100.0
        if v is not None and v.isdigit():
            p = float(v)
        return min(p, configured) if is_set else p

    def decode_headers(self, stream, end_stream: bool) -> int:
        c = self.config
        self.stream = stream
        route = stream.route
        if route is not None and route.per_filter is not None:
            c = self.config = route.per_filter.get(FAULT, c)
        if c.matchers:
            headers = stream.headers
            for m in c.matchers:
                if not m(headers):
                    return CONTINUE
        if c.upstream_cluster is not None and (route is None or route.cluster != c.upstream_cluster):
            return CONTINUE
        if c.max_active_faults is not None and self.state.active >= c.max_active_faults:
            return CONTINUE
        delay = c.delay_s
        pct = c.delay_percent
        if c.header_delay:
            v = _header(stream.headers, b"x-envoy-fault-delay-request")
            delay = int(v) / 1000.0 if v is not None and v.isdigit() else None
            pct = self._percent(stream.headers, b"x-envoy-fault-delay-request-percentage", c.delay_percent,
                                c.delay_percent_set)
        if delay is not None and _roll(pct):
            stream.flags.append("DI")
            self._count()
            self.timer = self.loop.call_later(delay, self._after_delay)
            return STOP_ITERATION
        return CONTINUE if not self._abort() else STOP_ITERATION

    def _abort(self) -> bool:
        c = self.config
        stream = self.stream
        status, pct = c.abort_status, c.abort_percent
        if c.header_abort:
            v = _header(stream.headers, b"x-envoy-fault-abort-request")
            status = int(v) if v is not None and v.isdigit() and 200 <= int(v) < 600 else None
            pct = self._percent(stream.headers, b"x-envoy-fault-abort-request-percentage", c.abort_percent,
                                c.abort_percent_set)
        if status is not None and _roll(pct):
            self._count()
            stream.send_local_reply(status, b"fault filter abort", "FI")
            return True
        return False

    def _count(self) -> None:
        if not self.counted:
            self.counted = True
            self.state.active += 1

    def _after_delay(self) -> None:
        self.timer = None
        if not self._abort():
            self.stream.continue_decoding()

    def on_destroy(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.state.active -= 1


FAULT = "envoy.filters.http.fault"
registry.register(registry.FilterInfo(
    names=(FAULT, "envoy.fault"),
    type_urls=("type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
               "type.googleapis.com/envoy.config.filter.http.fault.v2.HTTPFault"),
    parse=_parse, factory=_factory, parse_per_route=_parse))
