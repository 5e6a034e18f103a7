"""minimesh-proxy: an Envoy-compatible HTTP/1.1 sidecar in Python (see docs/proxy.md).

The sidecar stands alone: its modules import the standard library, third-party packages
and ``proxy.*`` only. It meets the control plane through its bootstrap file, xDS and SDS,
never through the control plane's code, so it can be read, run and tested by itself.

Here: ``server`` (lifecycle, listener manager), ``admin`` (the admin endpoints),
``access_log``, ``stats``, ``tcp_proxy``, ``errors``, and the packages ``config`` (Envoy
configuration parsed into frozen specs), ``http`` (codec, connection manager, client),
``filters`` (HTTP filters, the router), ``upstream`` (clusters, pools, load balancing,
health), ``tls`` (mTLS and workload identity) and ``xds`` (dynamic configuration).
A module imports its siblings by module path (``from proxy.http.codec import ...``); the
package ``__init__`` files only name the public API and load it on first use.
"""
from proxy.lazy import lazy_exports



def _version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip shows it)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("minimesh")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.server": ("Server",),
    "proxy.errors": ("StartupError",),
    "proxy.config.bootstrap": ("Bootstrap", "load_bootstrap", "parse_bootstrap"),
    "proxy.config.reader": ("ConfigError",),
})
__all__ += ["__version__"]
