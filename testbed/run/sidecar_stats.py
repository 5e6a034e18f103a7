"""A sidecar's admin stats, fetched through a testbed host and parsed: the one stats client
of the experiments (minimesh-proxy and Envoy print the same ``/stats`` format).

    stats = fetch_stats(ctx.tb, "px", 9901)            # {"cluster.echo.upstream_rq_retry": 3, ...}
    cluster_stats(stats, "echo")["upstream_rq_retry"]  # the cluster's own stats, by short name
    total(stats, "cluster.*echo*.upstream_rq_retry")   # summed over the names matching a glob

``fetch_stats(..., prometheus=True)`` reads ``/stats/prometheus`` instead: series (name with
its labels, as printed) -> value.
"""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from testbed.net.running import RunningTestbed

__all__ = ["StatsError", "fetch_stats", "parse_stats", "parse_prometheus", "cluster_stats", "total"]


class StatsError(RuntimeError):
    """The admin endpoint did not answer."""


def fetch_stats(tb: RunningTestbed, host: str, port: int, prometheus: bool = False, timeout_s: float = 2.0,
                address: str = "127.0.0.1") -> dict[str, Any]:
    """GET ``http://<address>:<port>/stats`` (or ``/stats/prometheus``) with curl inside
    testbed host ``host``, parsed by :func:`parse_stats` (:func:`parse_prometheus`).
    Raises StatsError when curl fails."""
    path = "/stats/prometheus" if prometheus else "/stats"
    out, err, code = tb.host(host).pexec(["curl", "-s", "-m", f"{timeout_s:g}", f"http://{address}:{port}{path}"])
    if code != 0:
        raise StatsError(f"admin stats of {host} ({address}:{port}{path}): curl exit {code} {err.strip()}")
    return parse_prometheus(out) if prometheus else parse_stats(out)


def parse_stats(text: str) -> dict[str, int]:
    """Envoy's ``/stats`` text (``name: value`` lines) -> {name: value} for the counters and
    gauges (integer values); histogram summaries and other lines are skipped."""
    out = {}
    for line in text.replace("\r", "").splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {series (``name{labels}`` as printed): value}; comments skipped."""
    out = {}
    for line in text.replace("\r", "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series.strip()] = float(value)
        except ValueError:
            continue
    return out


def cluster_stats(stats: Mapping[str, int], cluster: str) -> dict[str, int]:
    """The stats ``cluster.<cluster>.<name>`` by ``<name>``, for names without dots (the
    cluster's own counters, not e.g. ``outlier_detection.*``)."""
    prefix = f"cluster.{cluster}."
    return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix) and "." not in k[len(prefix):]}


def total(stats: Mapping[str, int], pattern: str) -> int:
    """Sum of the stats whose names match the glob ``pattern`` (``*`` also matches dots)."""
    return sum(v for k, v in stats.items() if fnmatch.fnmatchcase(k, pattern))
