"""Sidecars' outlier ejections in the run's history.

Every mesh sidecar (minimesh-proxy or real Envoy) writes Envoy's outlier event log,
``<run dir>/logs/<sidecar>.outlier.log`` (bootstrap ``cluster_manager.outlier_detection.
event_log_path``; one ``envoy.data.cluster.v3.OutlierDetectionEvent`` JSON object per line,
docs/proxy.md). :func:`import_outlier_logs` turns each line into a history ``event``:

    {"type": "event", "t": 12.31, "source": "sidecar:client@c0", "kind": "ejection",
     "details": {"cluster": "outbound|8080|v1|echo", "upstream": "10.0.0.3:8080",
                 "instance": "echo-v1-0", "type": "CONSECUTIVE_GATEWAY_FAILURE",
                 "num_ejections": 1, "enforced": true, "secs_since_last_action": null}}

``kind``: ``ejection`` (EJECT; ``enforced`` false: detected, not enforced, the host stayed
in) or ``unejection`` (UNEJECT; its ``type`` is the one of the ejection it ends, from the
same log, None if unknown: Envoy writes the enum default there). ``t``: the event's
timestamp (wall clock) minus the run's ``wall0``. ``instance``: the mesh instance with that
ip:port, when one has it.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["SUFFIX", "parse_outlier_line", "instance_names", "outlier_records", "import_outlier_logs",
           "import_mesh_logs", "first_ejection"]

SUFFIX = ".outlier.log"
_KINDS = {"EJECT": "ejection", "UNEJECT": "unejection"}


def parse_outlier_line(line: str) -> dict[str, Any] | None:
    """One event line -> {kind, wall, cluster, upstream, type, num_ejections, enforced,
    secs_since_last_action}; None for a line that is not an outlier event (e.g. truncated)."""
    try:
        d = json.loads(line)
        wall = _dt.datetime.fromisoformat(str(d["timestamp"]).replace("Z", "+00:00")).timestamp()
        kind = _KINDS[d["action"]]
    except (ValueError, KeyError, TypeError):
        return None
    since = d.get("secs_since_last_action")
    return {"kind": kind, "wall": wall, "cluster": d.get("cluster_name", ""), "upstream": d.get("upstream_url", ""),
            "type": d.get("type", "CONSECUTIVE_5XX"), "num_ejections": int(d.get("num_ejections", 0)),
            "enforced": bool(d.get("enforced", False)),
            "secs_since_last_action": int(since) if since is not None else None}


def instance_names(spec: Any) -> dict[str, str]:
    """ip:port -> instance name for a MeshSpec's instances (the endpoints Pilot sends)."""
    return {f"{i.ip}:{i.port}": i.instance for i in getattr(spec, "instances", ())}


def outlier_records(lines: Iterable[str], wall0: float, names: Mapping[str, str]) -> list[tuple[float, str, dict]]:
    """(run time, kind, details) per event line of one sidecar's log, in file order."""
    out, last_type = [], {}
    for line in lines:
        ev = parse_outlier_line(line)
        if ev is None:
            continue
        key = (ev["cluster"], ev["upstream"])
        if ev["kind"] == "ejection" and ev["enforced"]:
            last_type[key] = ev["type"]
        typ = ev["type"] if ev["kind"] == "ejection" else last_type.get(key)
        details = {"cluster": ev["cluster"], "upstream": ev["upstream"], "instance": names.get(ev["upstream"]),
                   "type": typ, "num_ejections": ev["num_ejections"], "enforced": ev["enforced"],
                   "secs_since_last_action": ev["secs_since_last_action"]}
        out.append((ev["wall"] - wall0, ev["kind"], details))
    return out


def import_outlier_logs(history: Any, logs_dir: "Path | str", wall0: float, spec: Any = None, **extra: Any) -> int:
    """Every ``<sidecar>.outlier.log`` in ``logs_dir`` appended to ``history`` as events of
    source ``sidecar:<sidecar>`` (``extra`` added to each, e.g. config=tag); ``spec`` (a
    MeshSpec) names the upstreams. Returns how many were imported."""
    names = instance_names(spec) if spec is not None else {}
    n = 0
    for path in sorted(Path(logs_dir).glob(f"*{SUFFIX}")):
        sidecar = path.name[:-len(SUFFIX)]
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for t, kind, details in outlier_records(lines, wall0, names):
            history.event(f"sidecar:{sidecar}", kind, t=t, **details, **extra)
            n += 1
    return n


def import_mesh_logs(history: Any, wall0: float, logs_dir: "Path | str", pilot_events: "Path | str",
                     spec: Any = None, **extra: Any) -> int:
    """A mesh's control- and data-plane events into ``history``: Pilot's events file (source
    ``pilot``) and the sidecars' outlier logs under ``logs_dir`` (:func:`import_outlier_logs`),
    on the history's clock (``wall0``). Used by experiments and by ``minimesh up --out``."""
    return history.import_events("pilot", pilot_events, wall0, **extra) + \
        import_outlier_logs(history, logs_dir, wall0, spec, **extra)


def first_ejection(events: Iterable[Any], instance: str, after: float, until: float | None = None,
                   sidecar: str | None = None) -> Any | None:
    """The first enforced ``ejection`` event of ``instance`` at run time >= ``after`` (and <=
    ``until``), by any sidecar or by ``sidecar`` (its name, e.g. client@c0); None if none."""
    hits = [e for e in events if e.kind == "ejection" and e.source.startswith("sidecar:")
            and e.details.get("instance") == instance and e.details.get("enforced")
            and e.t >= after and (until is None or e.t <= until)
            and (sidecar is None or e.source == f"sidecar:{sidecar}")]
    return min(hits, key=lambda e: e.t, default=None)
