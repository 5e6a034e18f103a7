"""Sampling a running testbed (and its mesh) into the page's state, once per tick.

:class:`Collector` reads, each tick: every link's shape and up/down state and the drop
rules in force (``tb.control``), the outstanding faults of the shell's Nemesis (crashed and
paused processes, partitions), every sidecar's ``/stats/prometheus`` (over
:func:`testbed.ui.netns.http_in`), Pilot's ``/syncz`` (its admin unix socket) and every
etcd member's ``/v3/maintenance/status``. Between ticks it takes the history's records as
they are appended (:meth:`History.subscribe`) and tails Pilot's events file and the
sidecars' outlier logs, so pushes, NACKs and ejections reach the timeline while the run goes
on (``up`` imports those files into the history only at the end).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from testbed.run.outlier_events import SUFFIX, instance_names, outlier_records
from testbed.run.sidecar_stats import parse_prometheus
from testbed.ui.page.model import RateWindow, fault_spans, link_state, merge_rates, sidecar_sample, timeline_item
from testbed.ui.netns import NetnsError, http_in

__all__ = ["Collector", "Sidecar"]

TIMELINE_MAX = 400


class Sidecar:
    """One sidecar the page polls: its name (instance, or client@host), host and admin port,
    what it is (service, version), and its rate window."""

    def __init__(self, name: str, host: str, port: int, service: str = "", version: str = ""):
        self.name, self.host, self.port, self.service, self.version = name, host, port, service, version
        self.window = RateWindow()
        self.up = False
        self.error = ""


class _Tail:
    """New complete lines of a growing file since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class Collector:
    """The live state of ``tb`` (+ ``mesh``, the shell's ``faults`` session, the session's
    ``history`` on ``clock``). :meth:`tick` samples; :meth:`state` is the page's JSON."""

    def __init__(self, tb: Any, mesh: Any = None, faults: Any = None, history: Any = None, clock: Any = None):
        self.tb, self.faults, self.clock = tb, faults, clock
        self.attach_mesh(mesh)
        self._lock = threading.Lock()
        self._timeline: list[dict[str, Any]] = []
        self._state: dict[str, Any] = {}
        self._ejected: dict[str, set[str]] = {}      # instance -> sidecars that eject it now
        self._leader: str | None = None
        self._tails: dict[str, _Tail] = {}
        self.unsubscribe = history.subscribe(self._on_record) if history is not None else (lambda: None)

    def attach_mesh(self, mesh: Any) -> None:
        """Follow ``mesh`` (None: no mesh), e.g. once an experiment has started it."""
        self.spec = getattr(mesh, "spec", None)
        self._names = instance_names(self.spec) if self.spec is not None else {}
        self.sidecars = self._sidecars()
        self._tails = {}
        self.mesh = mesh

    def _sidecars(self) -> list[Sidecar]:
        if self.spec is None:
            return []
        out = [Sidecar(i.instance, i.host, i.admin_port, i.service, i.version) for i in self.spec.instances]
        out += [Sidecar(f"client@{h}", h, 15000) for h in self.spec.client_sidecar_hosts]
        return out

    def now(self) -> float:
        return self.clock.now() if self.clock is not None else time.monotonic()

    # --- history and logs -> timeline ------------------------------------------------------

    def _on_record(self, record: Any) -> None:
        source = getattr(record, "source", "")
        if source == "pilot" or source.startswith("sidecar:"):
            return          # tailed live from their files (and imported again into the history at the end)
        item = timeline_item(record)
        if item is not None:
            self._add(item)

    def _add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._timeline.append(item)
            if len(self._timeline) > TIMELINE_MAX:
                spans = [it for it in self._timeline if it.get("kind") == "fault"]
                rest = [it for it in self._timeline if it.get("kind") != "fault"][-TIMELINE_MAX // 2:]
                self._timeline = sorted(spans[-TIMELINE_MAX // 2:] + rest, key=lambda it: it["t"])

    def _wall0(self) -> float:
        return getattr(self.clock, "wall0", time.time() - self.now())

    def _tail_logs(self) -> None:
        run_dir = getattr(self.mesh, "run_dir", None)
        if run_dir is None:
            return
        wall0 = self._wall0()
        events = self._tails.setdefault("pilot", _Tail(Path(run_dir) / "pilot-events.jsonl"))
        for line in events.lines():
            self._pilot_event(line, wall0)
        for path in sorted((Path(run_dir) / "logs").glob(f"*{SUFFIX}")):
            sidecar = path.name[:-len(SUFFIX)]
            tail = self._tails.setdefault(str(path), _Tail(path))
            for t, kind, d in outlier_records(tail.lines(), wall0, self._names):
                inst = str(d.get("instance") or d.get("upstream"))
                if d.get("enforced") or kind == "unejection":
                    who = self._ejected.setdefault(inst, set())
                    (who.add if kind == "ejection" else who.discard)(sidecar)
                self._add({"t": round(t, 3), "kind": kind, "cls": "eject",
                           "label": f"sidecar:{sidecar}: {kind} {inst} ({d.get('type')})"})

    def _pilot_event(self, line: str, wall0: float) -> None:
        try:
            d = json.loads(line)
        except ValueError:
            return
        kind = d.get("event")
        if kind not in ("config", "nack"):      # pushes and ACKs per node: the sync table shows them
            return
        t = d["t"] - wall0 if isinstance(d.get("t"), (int, float)) else self.now()
        label = (f"pilot: config version {d.get('version')} ({d.get('reason', '')})" if kind == "config" else
                 f"pilot: NACK from {d.get('node')} for {d.get('type')} {d.get('version')}: {d.get('error')}")
        self._add({"t": round(t, 3), "kind": "push" if kind == "config" else "nack",
                   "cls": "push" if kind == "config" else "nack", "label": label})

    # --- one tick ----------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Sample everything once; returns (and keeps) the page's state."""
        t = self.now()
        self._tail_logs()
        self._poll_sidecars(t)
        state: dict[str, Any] = {"t": round(t, 3), "live": True, "topology": getattr(self.tb.topology, "name", ""),
                 "network": self.network(), "services": self.services(), "control": self.control()}
        with self._lock:
            state["timeline"] = list(self._timeline)
        state["spans"] = fault_spans(state["timeline"], t)
        self._state = state
        return state

    def state(self, max_age_s: float = 1.0) -> dict[str, Any]:
        """The last tick's state, or a new one if that is older than ``max_age_s``."""
        if not self._state or self.now() - self._state["t"] > max_age_s:
            return self.tick()
        return self._state

    def _host_pid(self, host: str) -> int:
        return int(self.tb.host(host).pid)

    def _poll_sidecars(self, t: float) -> None:
        for sc in self.sidecars:
            try:
                status, body = http_in(self._host_pid(sc.host), "127.0.0.1", sc.port, "/stats/prometheus",
                                       timeout_s=0.5)
                sc.up, sc.error = status == 200, "" if status == 200 else f"HTTP {status}"
            except (NetnsError, KeyError) as e:
                sc.up, sc.error = False, str(e)
            if sc.up:
                sc.window.add(t, sidecar_sample(parse_prometheus(body.decode(errors="replace"))))

    # --- the network -------------------------------------------------------------------------

    def _process_faults(self) -> tuple[dict[str, str], list[str]]:
        """(process -> 'crashed'|'paused', descriptions of partitions) from the outstanding faults."""
        nemesis = getattr(self.faults, "nemesis", None)
        procs: dict[str, str] = {}
        parts: list[str] = []
        for op in list(getattr(nemesis, "outstanding", {}).values()):
            f = op.fault
            kind = getattr(type(f), "kind", "")
            if kind in ("crash", "pause"):
                procs[f.process] = "crashed" if kind == "crash" else "paused"
            elif kind in ("partition", "cut"):
                parts.append(f.describe())
        return procs, parts

    def _process_hosts(self) -> dict[str, str]:
        """Process name (instance, etcd member, pilot, citadel) -> the host it runs on."""
        spec = self.spec
        if spec is None:
            return {}
        out = {i.instance: i.host for i in spec.instances}
        etcd = getattr(self.mesh, "etcd", None)
        for m in getattr(getattr(etcd, "cluster", None), "members", ()):
            out[m.name] = m.run_on
        out["pilot"] = out["citadel"] = spec.control_plane
        return out

    def network(self) -> dict[str, Any]:
        topo = self.tb.topology
        procs, partitions = self._process_faults()
        where = self._process_hosts()
        marks: dict[str, list[str]] = {}
        hosts = {h.name for h in topo.hosts}
        for p, how in procs.items():
            marks.setdefault(where.get(p, p), []).append(f"{p} {how}")
        elsewhere = [m for h, ms in marks.items() if h not in hosts for m in ms]    # no host known
        drops = [(r.src, r.dst) for r in self.tb.control.drops()]
        cut_hosts = {h for pair in drops for h in pair}
        roles = self._roles()
        nodes = [{"id": h.name, "kind": "host", "marks": marks.get(h.name, []), "cut": h.name in cut_hosts,
                  "roles": roles.get(h.name, [])} for h in topo.hosts]
        nodes += [{"id": s.name, "kind": "switch", "marks": [], "cut": False, "roles": []} for s in topo.switches]
        links = []
        for a, b, link in self.tb.control.links():
            fwd, back = link.get_shapes() if hasattr(link, "get_shapes") else (None, None)
            up = getattr(link, "is_up", lambda: True)() is not False
            links.append(link_state(a, b, fwd, back, up, False))
        return {"nodes": nodes, "links": links, "drops": [list(d) for d in drops], "partitions": partitions,
                "processes": elsewhere}

    def _roles(self) -> dict[str, list[str]]:
        spec = self.spec
        if spec is None:
            return {}
        roles: dict[str, list[str]] = {}
        for i in spec.instances:
            roles.setdefault(i.host, []).append(i.instance)
        for h in spec.clients:
            roles.setdefault(h, []).append("client")
        for m in spec.registry.members:
            roles.setdefault(m, []).append("etcd")
        roles.setdefault(spec.control_plane, []).extend(["pilot", "citadel"] if spec.security.citadel else ["pilot"])
        return roles

    # --- the service graph ---------------------------------------------------------------------

    def services(self) -> dict[str, Any]:
        """Kiali's versioned app graph: sources -> services -> versions -> instances."""
        if self.spec is None:
            return {"services": [], "edges": [], "sources": []}
        procs, _ = self._process_faults()
        by_name = {sc.name: sc for sc in self.sidecars}
        services = []
        for svc in sorted({i.service for i in self.spec.instances}):
            insts = [i for i in self.spec.instances if i.service == svc]
            versions = []
            for ver in sorted({i.version for i in insts}):
                rows = [self._instance(i, by_name[i.instance], procs) for i in insts if i.version == ver]
                versions.append({"name": ver, "rps": round(sum(r["rps"] or 0 for r in rows), 1), "instances": rows})
            total = sum(v["rps"] for v in versions)
            for v in versions:
                v["share"] = round(v["rps"] / total, 4) if total > 0 else None
            services.append({"name": svc, "rps": round(total, 1), "versions": versions})
        edges, sources = self._edges({s["name"] for s in services})
        return {"services": services, "edges": edges, "sources": sources}

    def _instance(self, inst: Any, sc: Sidecar, procs: dict[str, str]) -> dict[str, Any]:
        inbound = sc.window.rates((inst.service, "unknown")) or sc.window.rates((inst.service, ""))
        row = {"name": inst.instance, "host": inst.host, "state": procs.get(inst.instance) or
               ("up" if sc.up else "down"), "error": sc.error,
               "ejected_by": sorted(self._ejected.get(inst.instance, ())),
               **(inbound.to_dict() if inbound else {"rps": 0.0, "success": None, "p50_ms": None,
                                                     "p99_ms": None, "total": 0})}
        return row

    def _edges(self, services: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
        parts: dict[tuple[str, str], list[Any]] = {}
        split: dict[tuple[str, str], dict[str, float]] = {}
        ejecting: set[tuple[str, str]] = set()
        for sc in self.sidecars:
            latest = sc.window.latest
            if latest is None:
                continue
            src = f"svc:{sc.service}" if sc.service else f"client:{sc.name.split('@', 1)[1]}"
            for (svc, ver), _ in latest.dests.items():
                if svc == sc.service or svc not in services:
                    continue                                # inbound, or not a mesh service
                rates = sc.window.rates((svc, ver))
                parts.setdefault((src, svc), []).append(rates)
                if rates is not None and ver not in ("", "unknown"):
                    by_ver = split.setdefault((src, svc), {})
                    by_ver[ver] = by_ver.get(ver, 0.0) + rates.rps
            for cluster, n in latest.ejections_active.items():
                name = cluster.split("|")[-1]
                if n > 0 and name in services:
                    ejecting.add((src, name))
        edges = []
        for (src, svc), rs in sorted(parts.items()):
            merged = merge_rates(rs)
            if merged is None:
                continue
            vs = split.get((src, svc), {})
            tot = sum(vs.values())
            edges.append({"src": src, "dst": f"svc:{svc}", **merged.to_dict(), "ejecting": (src, svc) in ejecting,
                          "split": {v: round(r / tot, 4) for v, r in sorted(vs.items())} if tot > 0 else {}})
        sources = sorted({e["src"] for e in edges if e["src"].startswith("client:")})
        return edges, sources

    # --- the control plane ------------------------------------------------------------------------

    def control(self) -> dict[str, Any]:
        if self.mesh is None:
            return {"pilot": None, "etcd": [], "certs": []}
        certs = [{"sidecar": sc.name, "days": None if sc.window.latest is None else sc.window.latest.cert_days}
                 for sc in self.sidecars] if self.spec is not None and self.spec.security.citadel else []
        return {"pilot": self._pilot(), "etcd": self._etcd(), "certs": certs}

    def _node_names(self) -> dict[str, str]:
        assert self.spec is not None
        names = {self.mesh.node_id(i): i.instance for i in self.spec.instances}
        names.update({self.mesh.client_node_id(h): f"client@{h}" for h in self.spec.client_sidecar_hosts})
        return names

    def _pilot(self) -> dict[str, Any]:
        try:
            status = self.mesh.admin.get("/status")
            syncz = self.mesh.admin.get("/syncz")
        except (OSError, RuntimeError, ValueError) as e:
            return {"error": f"Pilot unreachable: {e}", "generation": None, "nodes": []}
        names = self._node_names()
        acked = {n["node"]: {s["type"]: s["acked"] for s in n["subscriptions"]} for n in syncz.get("nodes", [])}
        nacked = {n["node"]: [f"{s['type']} {s['nacked']}: {s['error']}" for s in n["subscriptions"] if s["nacked"]]
                  for n in syncz.get("nodes", [])}
        nodes = [{"node": names.get(nid, nid), "synced": bool(st.get("synced")), "acked": acked.get(nid, {}),
                  "nacked": nacked.get(nid, [])} for nid, st in sorted(status.get("nodes", {}).items())]
        return {"generation": status.get("generation"), "healthy": status.get("discovery_healthy"),
                "rules": status.get("rules", []), "nodes": nodes}

    def _etcd(self) -> list[dict[str, Any]]:
        from testbed.mesh.etcd.wire import MemberStatus     # late: only with a mesh
        etcd = getattr(self.mesh, "etcd", None)
        cluster = getattr(etcd, "cluster", None)
        if cluster is None:
            return []
        rows = []
        for m in cluster.members:
            try:
                code, body = http_in(self._host_pid(m.run_on), "127.0.0.1", m.client_port,
                                     "/v3/maintenance/status", "POST", b"{}", timeout_s=0.5)
                st = MemberStatus.from_json(json.loads(body)) if code == 200 else None
            except (NetnsError, ValueError, KeyError):
                st = None
            leader = cluster.member_by_id(st.leader_id) if st is not None and st.leader_id else None
            rows.append({"name": m.name, "host": m.run_on, "up": st is not None,
                         "leader": leader.name if leader is not None else None,
                         "is_leader": leader is not None and leader.name == m.name,
                         "term": st.raft_term if st else None, "index": st.raft_index if st else None,
                         "healthy": bool(st is not None and st.leader_id and not st.errors),
                         "errors": list(st.errors) if st else ["no answer"]})
        self._leader_changes(rows)
        return rows

    def _leader_changes(self, rows: list[dict[str, Any]]) -> None:
        leaders = sorted({f"{r['leader']} (term {r['term']})" for r in rows if r["is_leader"]})
        now = ", ".join(leaders) or "none"
        if now != self._leader:
            if self._leader is not None:
                two = " — two leaders (split brain)" if len(leaders) > 1 else ""
                self._add({"t": round(self.now(), 3), "kind": "leader_change", "cls": "leader",
                           "label": f"etcd: leader {now}{two}"})
            self._leader = now


