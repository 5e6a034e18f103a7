"""HTTP filters registered by name (Envoy's extension names, v3 and v2 spellings).

A filter module calls :func:`register` with its names, accepted ``@type`` URLs, a
``parse(Obj) -> config`` (run once at load time) and ``factory(config, ctx)`` returning
a zero-argument callable that makes one filter instance per stream.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from proxy.config.reader import ConfigError, Obj

__all__ = ["FilterInfo", "register", "http_filter", "per_route_config", "BUILTIN_MODULES"]

BUILTIN_MODULES = ("proxy.filters.router", "proxy.filters.fault", "proxy.filters.rbac")


@dataclass(frozen=True)
class FilterInfo:
    names: tuple[str, ...]           # canonical name first
    type_urls: tuple[str, ...]
    parse: Callable[[Any], Any]
    factory: Callable[[Any, Any], Callable[[], Any]]
    # parses the filter's entry in a route's or virtual host's typed_per_filter_config;
    # None: the filter takes no per-route configuration
    parse_per_route: Callable[[Any], Any] | None = None


_FILTERS: dict[str, FilterInfo] = {}
_loaded = False


def register(info: FilterInfo) -> FilterInfo:
    for n in info.names:
        _FILTERS[n] = info
    return info


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in BUILTIN_MODULES:
            importlib.import_module(m)


def http_filter(name: str, path: str = "") -> FilterInfo:
    _load_builtins()
    try:
        return _FILTERS[name]
    except KeyError:
        known = sorted({i.names[0] for i in _FILTERS.values()})
        raise ConfigError(path, f"unsupported HTTP filter {name!r}; allowed: {', '.join(known)}") from None


def per_route_config(name: str, raw: Any, path: str) -> tuple[str, Any]:
    """One entry of ``typed_per_filter_config``: (canonical filter name, parsed config)."""
    info = http_filter(name, path)
    if info.parse_per_route is None:
        raise ConfigError(path, f"filter {name!r} takes no per-route configuration in minimesh-proxy")
    o = Obj(raw, path)
    url = o.take("@type", None, str)
    if url is not None and url not in info.type_urls:
        raise ConfigError(o.sub("@type"), f"type {url!r} does not fit filter {name!r}; "
                          f"expected {' or '.join(info.type_urls)}")
    parsed = info.parse_per_route(o)
    o.done()
    return info.names[0], parsed
