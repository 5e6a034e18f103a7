"""Outlier detection event log (bootstrap ``cluster_manager.outlier_detection.event_log_path``).

One JSON object per line, ``envoy.data.cluster.v3.OutlierDetectionEvent`` printed the way
Envoy 1.40 prints it (proto JSON with the proto field names, default values included):

    {"type":"CONSECUTIVE_5XX","timestamp":"2026-11-27T11:00:42.497Z","cluster_name":"od",
     "upstream_url":"127.0.0.1:55423","action":"EJECT","num_ejections":1,"enforced":true,
     "eject_consecutive_event":{}}

- ``secs_since_last_action`` (a UInt64Value, so a JSON string): whole seconds since the
  host's last unejection (EJECT) or last ejection (UNEJECT); absent when there was none.
- ``num_ejections``: enforced ejections of the host so far (this one included).
- ``enforced``: false for a detection that ``enforcing_*`` did not turn into an ejection
  (Envoy logs those too); always false for UNEJECT.
- ``type`` on UNEJECT is the enum's default (CONSECUTIVE_5XX), not the ejection's type:
  Envoy does not set it there.

:func:`format_event` is the pure part (tested with a fake clock); :class:`OutlierEventLog`
appends and flushes one line per event.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from typing import Callable

__all__ = ["EJECTION_TYPES", "format_timestamp", "format_event", "upstream_url", "OutlierEventLog"]

# envoy.data.cluster.v3.OutlierEjectionType (the ones minimesh's detector raises: the first two)
EJECTION_TYPES = ("CONSECUTIVE_5XX", "CONSECUTIVE_GATEWAY_FAILURE", "SUCCESS_RATE",
                  "CONSECUTIVE_LOCAL_ORIGIN_FAILURE", "SUCCESS_RATE_LOCAL_ORIGIN", "FAILURE_PERCENTAGE",
                  "FAILURE_PERCENTAGE_LOCAL_ORIGIN")


def format_timestamp(wall_s: float) -> str:
    """A google.protobuf.Timestamp in proto JSON at Envoy's millisecond precision:
    ``2026-11-27T11:00:42.497Z`` (no fraction when the milliseconds are 0)."""
    ms = int(wall_s * 1000)
    t = _dt.datetime.fromtimestamp(ms // 1000, _dt.timezone.utc)
    frac = f".{ms % 1000:03d}" if ms % 1000 else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def upstream_url(address: str, port: int) -> str:
    """Envoy's ``address()->asString()``: ``ip:port``, ``[ip6]:port``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def format_event(*, action: str, type_: str, wall_s: float, cluster: str, upstream: str, num_ejections: int,
                 enforced: bool, secs_since_last_action: int | None) -> str:
    """One event line (without the newline). ``action``: EJECT | UNEJECT."""
    if action not in ("EJECT", "UNEJECT"):
        raise ValueError(f"action {action!r}; allowed: EJECT, UNEJECT")
    if type_ not in EJECTION_TYPES:
        raise ValueError(f"type {type_!r}; allowed: {', '.join(EJECTION_TYPES)}")
    ev: dict = {"type": type_ if action == "EJECT" else EJECTION_TYPES[0],
                "timestamp": format_timestamp(wall_s)}
    if secs_since_last_action is not None:
        ev["secs_since_last_action"] = str(max(0, int(secs_since_last_action)))
    ev.update(cluster_name=cluster, upstream_url=upstream, action=action, num_ejections=num_ejections,
              enforced=bool(enforced) and action == "EJECT")
    if action == "EJECT":   # the per-type detail (oneof event): empty for consecutive failures
        ev["eject_consecutive_event"] = {}
    return json.dumps(ev, separators=(",", ":"))


class OutlierEventLog:
    """Appends events to ``path`` (opened at once: a bad path fails at startup), one
    ``write`` per event, so a line is in the file as soon as it happened. ``wall`` is
    injected (tests pass a fake clock); the detector passes the seconds since the host's
    last action on its own (monotonic) clock."""

    def __init__(self, path: str, wall: Callable[[], float] = time.time):
        self.path = path
        self.wall = wall
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, action: str, cluster: str, address: str, port: int, num_ejections: int, *,
            type_: str = EJECTION_TYPES[0], enforced: bool = False, since_s: float | None = None) -> str:
        """Write one event; returns the line written."""
        line = format_event(action=action, type_=type_, wall_s=self.wall(), cluster=cluster,
                            upstream=upstream_url(address, port), num_ejections=num_ejections, enforced=enforced,
                            secs_since_last_action=None if since_s is None else int(since_s))
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode())
        return line

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
