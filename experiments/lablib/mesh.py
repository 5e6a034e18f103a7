"""Experiment helpers for Pilot and its sidecars next to the registry, in a deployed mesh
(:func:`testbed.run.experiment.start_mesh` with :func:`registry_mesh_spec`):

    spec = registry_mesh_spec(topo_spec, heartbeat_ms=500, election_ms=5000)  # + a `probe` service
    mesh = start_mesh(ctx, spec=spec, tag="tuned")
    changes = RegistryChanger(ctx, "c1", url, "tuned").start(t0, t1, every_s=0.5)
    ...; changes.stop(); mesh.stop()
    lat = xds_latency(data.events, "tuned", mesh.node_ids(), base=len(spec.instances))
    window_summary(lat, t0, t1)     # p50/max of write -> config, -> push, -> every ACK

Each change puts a new instance ``probe/v1/p<i>`` under the registry prefix (``etcdctl put``
in the given host, not waiting for it), recorded as a ``registry``/``change`` event. Pilot
commits a new config (event ``config``: ``version`` = its generation, reason ``endpoints``,
``endpoints`` = how many it knows) for every change its watch delivers; that commit wakes
the sidecars' held EDS requests for the probe cluster: ``push`` (node, type ``endpoints``,
``version`` = "<generation>-<content hash>") and the sidecar's next request carrying that
version is its ``ack``. The generation joins them: a change committed in generation g has
reached node n once n ACKs an EDS version of generation >= g. Which config first holds a
change is counted in etcd's commit order (create revisions from the changer's final
``listing``): under a slow leader, commits overtake each other.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from dataclasses import replace
from typing import Any, Sequence

from testbed.mesh.etcd.registry import DEFAULT_PREFIX, endpoint_json
from testbed.mesh.model import Endpoint, VersionSpec
from testbed.mesh.pilot.process import AdminClient
from testbed.mesh.spec import ServiceDecl
from testbed.run.checkers.stats import percentile
from testbed.run.experiment import Context
from testbed.run.results import pyplot

__all__ = ["RegistryChanger", "pilot_seen_latency",
           "PilotWatcher", "plot_pilot_latency", "registry_mesh_spec", "xds_latency", "window_summary",
           "PROBE_SERVICE", "parse_listing", "write_summary", "leaders_elected", "keep_etcd_logs"]

PROBE_SERVICE = "probe"     # the RegistryChanger's instances

PILOT_PORT = 15010


class PilotWatcher:
    """Polls Pilot's admin ``/status`` (from the root namespace, through its unix socket
    ``socket``: a deployed mesh's ``mesh.socket``) every ``every_s``; records
    ``pilot``/``discovery`` events (healthy, endpoints: instance names Pilot serves) whenever
    either changes, and ``pilot``/``status_error`` when the socket does not answer."""

    def __init__(self, ctx: Context, socket: "str | os.PathLike[str]", every_s: float = 0.25):
        self.ctx, self.every_s = ctx, every_s
        self.client = AdminClient(str(socket), timeout_s=1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "PilotWatcher":
        self._thread.start()
        return self

    def _loop(self) -> None:
        last: Any = None
        now: tuple[Any, ...]
        while not self._stop.wait(self.every_s):
            try:
                st = self.client.get("/status")
                now = (bool(st.get("discovery_healthy")), tuple(sorted(st.get("endpoints", []))))
            except Exception as e:  # recorded, polling goes on
                now = ("error", str(e)[:200])
            if now != last:
                if now[0] == "error":
                    self.ctx.event("pilot", "status_error", error=now[1])
                else:
                    self.ctx.event("pilot", "discovery", healthy=now[0], endpoints=list(now[1]))
                last = now

    def stop(self) -> None:
        """Stop polling (idempotent)."""
        self._stop.set()
        self._thread.join()


class RegistryChanger:
    """Every ``every_s`` between t0 and t1 (run time), ``etcdctl put`` of a new probe
    instance from ``host`` to ``url``; each recorded as a ``registry``/``change`` event
    (config, seq, t_invoke) and, once etcdctl exits, ``registry``/``change_done`` (rc; the
    time is when it was noticed, not when etcdctl exited)."""

    def __init__(self, ctx: Context, host: str, url: str, tag: str, timeout_s: float = 20.0):
        self.ctx, self.host, self.url, self.tag, self.timeout_s = ctx, host, url, tag, timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: list[tuple[int, float, subprocess.Popen]] = []

    def start(self, t0: float, t1: float, every_s: float = 1.0) -> "RegistryChanger":
        self._thread = threading.Thread(target=self._loop, args=(t0, t1, every_s), daemon=True)
        self._thread.start()
        return self

    def _loop(self, t0: float, t1: float, every_s: float) -> None:
        i = 0
        while not self._stop.is_set() and t0 + i * every_s < t1:
            self.ctx.sleep_until(t0 + i * every_s)
            ep = Endpoint(PROBE_SERVICE, "v1", f"p{i}", self.host, "10.255.0.1", 10000 + i)
            key = f"{DEFAULT_PREFIX}{PROBE_SERVICE}/v1/p{i}"
            p = self.ctx.tb.popen(self.host, ["etcdctl", f"--endpoints={self.url}",
                                              f"--command-timeout={self.timeout_s:g}s", "put", key,
                                              endpoint_json(ep)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "ETCDCTL_API": "3"})
            t = self.ctx.clock.now()
            self.ctx.event("registry", "change", config=self.tag, seq=i, instance=f"p{i}", op="put", t_invoke=t)
            self._procs.append((i, t, p))
            i += 1
            self._reap()

    def _reap(self, block_s: float | None = None) -> None:
        keep = []
        for i, t, p in self._procs:
            try:
                rc = p.wait(block_s) if block_s is not None else p.poll()
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            if rc is None:
                keep.append((i, t, p))
            else:
                self.ctx.event("registry", "change_done", config=self.tag, seq=i, rc=rc)
        self._procs = keep

    def stop(self, wait_s: float = 20.0, listing: bool = True) -> None:
        """Stop issuing changes; wait for pending ones (killed after ``wait_s``); then (``listing``)
        record which probes the registry holds, with their create revisions: a ``registry``/
        ``listing`` event (config, revisions {instance: revision}; error instead if etcdctl failed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._reap(wait_s)
        if listing:
            p = self.ctx.tb.popen(self.host, ["etcdctl", f"--endpoints={self.url}", "--command-timeout=10s", "-w",
                                              "json", "get", "--prefix", f"{DEFAULT_PREFIX}{PROBE_SERVICE}/"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, "ETCDCTL_API": "3"})
            try:
                out, err = p.communicate(timeout=15)
                revisions = parse_listing(out.decode()) if p.returncode == 0 else None
            except (subprocess.TimeoutExpired, ValueError) as e:
                p.kill()
                p.wait()
                out, err, revisions = b"", str(e).encode(), None
            self.ctx.event("registry", "listing", config=self.tag, revisions=revisions,
                           **({} if revisions is not None else {"error": err.decode(errors="replace")[-300:]}))


def parse_listing(text: str) -> dict[str, int]:
    """``etcdctl -w json get --prefix`` output -> {instance (last key segment): create revision}."""
    kvs = json.loads(text).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode().rstrip("/").rsplit("/", 1)[-1]: int(kv["create_revision"])
            for kv in kvs}


def registry_mesh_spec(spec: Any, heartbeat_ms: int, election_ms: int, probe_port: int = 9000) -> Any:
    """``spec`` (a MeshSpec) with etcd's heartbeat/election timeouts replaced and a ``probe``
    service declared without instances: the :class:`RegistryChanger`'s fake instances are its
    only endpoints, so each change is one EDS push (of the probe cluster) to every sidecar and
    the other services' traffic is unaffected. Raises ValueError for timeouts etcd (or the
    lease TTL) would not accept, or a probe port another service uses."""
    reg = spec.registry
    if not 1 <= heartbeat_ms or not 5 * heartbeat_ms <= election_ms <= 50000:
        raise ValueError(f"election_ms {election_ms} must be between 5 x heartbeat_ms ({5 * heartbeat_ms}) "
                         "and 50000 (etcd's rule), heartbeat_ms >= 1")
    if reg.ttl_s * 1000 < 2 * election_ms:
        raise ValueError(f"mesh.registry.ttl_s {reg.ttl_s} s of {spec.source or 'the topology'} is shorter than "
                         f"2 x election_ms ({2 * election_ms} ms): leases would expire during an election")
    clash = [s.name for s in spec.services if s.name == PROBE_SERVICE or s.port == probe_port]
    if clash:
        raise ValueError(f"probe service {PROBE_SERVICE!r} on port {probe_port} clashes with service "
                         f"{clash[0]!r} of {spec.source or 'the topology'}; pick another probe_port")
    probe = ServiceDecl(PROBE_SERVICE, probe_port, "builtin:echo", None, (VersionSpec("v1"),), 0)
    return replace(spec, registry=replace(reg, heartbeat_ms=heartbeat_ms, election_ms=election_ms),
                   services=spec.services + (probe,))


def pilot_seen_latency(events: Sequence[Any], tag: str, base: int = 0) -> list[dict[str, Any]]:
    """One dict per registry change of config ``tag``: seq, t (invoke), ok (etcdctl rc 0),
    seen_ms: from the write to Pilot's first endpoints config that knows >= base + k
    endpoints (``base``: those that are not probes), and version: that config's generation.
    With the changer's ``listing`` event, k = how many probes the registry committed up to
    this one (create revisions; None: never committed, even if etcdctl said ok); without it,
    how many acknowledged puts were invoked up to this one (wrong when commits overtake)."""
    changes = sorted((e for e in events if e.source == "registry" and e.kind == "change"
                      and e.details.get("config") == tag), key=lambda e: e.t)
    rc = {e.details["seq"]: e.details.get("rc") for e in events if e.source == "registry"
          and e.kind == "change_done" and e.details.get("config") == tag}
    configs = sorted((e for e in events if e.source == "pilot" and e.kind == "config"
                      and e.details.get("config") == tag and e.details.get("reason") == "endpoints"),
                     key=lambda e: e.t)
    listing = next((e.details["revisions"] for e in events if e.source == "registry" and e.kind == "listing"
                    and e.details.get("config") == tag and e.details.get("revisions") is not None), None)
    out, k = [], 0
    for c in changes:
        seq = c.details["seq"]
        ok = rc.get(seq) == 0
        k += ok
        counted = ok
        if listing is not None:   # exact: the probes committed up to this one, in commit order
            rev = listing.get(c.details.get("instance", f"p{seq}"))
            counted, k = rev is not None, 0 if rev is None else sum(r <= rev for r in listing.values())
        seen = next((e for e in configs if e.t >= c.t and int(e.details.get("endpoints", 0)) >= base + k), None) \
            if counted else None
        out.append({"seq": seq, "t": c.t, "ok": ok, "seen_ms": None if seen is None else (seen.t - c.t) * 1000,
                    "version": None if seen is None else seen.details.get("version")})
    return out


def _generation(version: Any) -> int | None:
    """Pilot's xDS version "<generation>-<hash>" -> generation (None: not one of Pilot's)."""
    try:
        return int(str(version).split("-", 1)[0])
    except ValueError:
        return None


def xds_latency(events: Sequence[Any], tag: str, nodes: Sequence[str], base: int = 0,
                xds_type: str = "endpoints") -> list[dict[str, Any]]:
    """:func:`pilot_seen_latency` joined with Pilot's ``push``/``ack`` events of ``xds_type``
    to ``nodes`` (node ids; every sidecar): per change also push_ms (from the write until
    Pilot has pushed a version of the config's generation or later to every node), ack_ms
    (... until every node has ACKed one), acks {node: ms} and config_to_ack_ms (ack_ms -
    seen_ms: the xDS share). None where some node never got/ACKed it."""
    per: dict[str, dict[str, list[tuple[float, int]]]] = {"push": {}, "ack": {}}
    for e in sorted(events, key=lambda e: e.t):
        generation = _generation(e.details.get("version"))
        if e.source == "pilot" and e.kind in per and e.details.get("config") == tag \
                and e.details.get("type") == xds_type and generation is not None:
            per[e.kind].setdefault(str(e.details.get("node")), []).append((e.t, generation))
    out = []
    for c in pilot_seen_latency(events, tag, base):
        g = c["version"]
        first = {kind: {n: next((t for t, gen in per[kind].get(n, []) if isinstance(g, int) and gen >= g
                                 and t >= c["t"]), None) for n in nodes} for kind in per}
        ms: dict[str, float | None] = {}
        for kind in per:
            got = [t for t in first[kind].values() if t is not None]
            ms[kind] = None if not nodes or len(got) < len(first[kind]) else (max(got) - c["t"]) * 1000
        out.append({**c, "push_ms": ms["push"], "ack_ms": ms["ack"],
                    "acks": {n: None if t is None else round((t - c["t"]) * 1000, 1) for n, t in first["ack"].items()},
                    "config_to_ack_ms": None if ms["ack"] is None or c["seen_ms"] is None
                    else ms["ack"] - c["seen_ms"]})
    return out


def window_summary(changes: Sequence[dict[str, Any]], t0: float, t1: float, last_s: float = 3.0) -> dict[str, Any]:
    """Of the changes invoked in [t0, t1): how many (``changes``), how many Pilot never saw or
    not every node ACKed (``unseen``, ``unacked``: acknowledged writes only), and p50/max of
    write -> config (``config_``), -> every push (``push_``), -> every ACK (``ack_``), config ->
    every ACK (``xds_``), plus p50s over the changes invoked in the last ``last_s`` seconds."""
    mine = [c for c in changes if t0 <= c["t"] < t1]
    late = [c for c in mine if c["t"] >= t1 - last_s]
    out: dict[str, Any] = {"changes": len(mine), "unseen": sum(c["ok"] and c["seen_ms"] is None for c in mine),
                           "unacked": sum(c["ok"] and c.get("ack_ms") is None for c in mine)}
    for name, key in (("config", "seen_ms"), ("push", "push_ms"), ("ack", "ack_ms"), ("xds", "config_to_ack_ms")):
        vals = [c[key] for c in mine if c.get(key) is not None]
        out[f"{name}_p50_ms"], out[f"{name}_max_ms"] = percentile(vals, 50), max(vals, default=None)
        out[f"{name}_last{last_s:g}s_p50_ms"] = percentile([c[key] for c in late if c.get(key) is not None], 50)
    return out


def write_summary(ops: Sequence[dict[str, Any]], t0: float, t1: float, last_s: float = 3.0,
                  slow_s: float = 1.0) -> dict[str, Any]:
    """Of the etcd operations (:func:`lablib.etcd.etcd_ops`) invoked in [t0, t1): writes,
    ok (acknowledged), p50_ms/p99_ms of the acknowledged ones, last3s_p50_ms (those invoked in
    the last ``last_s``), not_ok, slow_share (not acknowledged or slower than ``slow_s``)."""
    ws = [o for o in ops if t0 <= o["t_invoke"] < t1]
    lat = [(o["t_done"] - o["t_invoke"]) * 1000 for o in ws if o["outcome"] == "ok"]
    late = [(o["t_done"] - o["t_invoke"]) * 1000 for o in ws if o["outcome"] == "ok" and o["t_invoke"] >= t1 - last_s]
    return {"writes": len(ws), "ok": len(lat), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            f"last{last_s:g}s_p50_ms": percentile(late, 50), "not_ok": sum(o["outcome"] != "ok" for o in ws),
            "slow_share": sum(o["outcome"] != "ok" or o["t_done"] - o["t_invoke"] > slow_s for o in ws) / len(ws)
            if ws else None}


def leaders_elected(events: Sequence[Any], tag: str, t0: float, t1: float) -> list[str]:
    """Members that some member's log saw elected leader (``etcd:<member>``/``leader``
    events of config ``tag``, :func:`lablib.etcd.etcd_log_events`) in [t0, t1]."""
    return sorted({str(e.details.get("leader")) for e in events if e.source.startswith("etcd:") and e.kind == "leader"
                   and e.details.get("config") == tag and t0 <= e.t <= t1})


def keep_etcd_logs(ctx: Context, runner: Any, tag: str) -> list[str]:
    """Copy each member's log to <out>/etcd-logs-<tag>/<member>.log (a mesh's etcd lives in
    its run dir, removed when it stops); returns the copied paths."""
    d = ctx.out / f"etcd-logs-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for m in runner.cluster.members:
        if os.path.exists(runner.cluster.log_file(m)):
            out.append(str(shutil.copy(runner.cluster.log_file(m), d / f"{m.name}.log")))
    return out


def plot_pilot_latency(path: os.PathLike, runs: dict[str, dict[str, Any]], title: str) -> None:
    """Per timeout set, against the one-way delay on the leader's link on a true numeric axis
    (symlog: 0 ms included): write / registry change -> Pilot config / -> every sidecar's ACK
    p50 and the writes' p99 (ms, log); the jump drawn apart (a hollow marker, no line into it);
    a step that elected a leader ringed and labelled; below, the share of writes not
    acknowledged (failed or timed out) per step; right, Pilot config -> every ACK p50."""
    plt = pyplot()
    fig, axd = plt.subplot_mosaic([["lat", "xds"], ["fail", "xds"]], figsize=(12, 6.5),
                                  gridspec_kw={"width_ratios": [3, 2], "height_ratios": [3, 1]})
    ax, axf, axn = axd["lat"], axd["fail"], axd["xds"]
    nan = float("nan")
    val = lambda w, k: w.get(k) if w.get(k) is not None else nan  # noqa: E731  (one cell)
    for n, (tag, r) in enumerate(runs.items()):     # one colour per timeout set, one style per measure
        grow = [w for w in r["windows"] if not w.get("jump")]
        jump = [w for w in r["windows"] if w.get("jump")]
        for key, style, what in (("p50_ms", "-o", "etcd write p50"), ("p99_ms", "-", "etcd write p99"),
                                 ("config_p50_ms", "--s", "change -> Pilot config p50"),
                                 ("ack_p50_ms", ":^", "change -> every sidecar ACK p50")):
            ax.plot([w["delay_ms"] for w in grow], [val(w, key) for w in grow], style, color=f"C{n}",
                    alpha=0.4 if key == "p99_ms" else 1, label=f"{tag}: {what}")
            ax.plot([w["delay_ms"] for w in jump], [val(w, key) for w in jump], style[-1], color=f"C{n}",
                    mfc="none", ms=10, alpha=0.4 if key == "p99_ms" else 1)
        for w in r["windows"]:
            if w.get("elected"):
                ax.plot([w["delay_ms"]], [val(w, "p50_ms")], "o", ms=16, mfc="none", color="tab:red")
                ax.annotate(f"election: {', '.join(w['elected'])}", (w["delay_ms"], val(w, "p50_ms")),
                            textcoords="offset points", xytext=(6, 10), fontsize=7, color="tab:red")
        xs = [w["delay_ms"] for w in r["windows"]]
        failed = [100 * (w.get("not_ok") or 0) / w["writes"] if w.get("writes") else nan for w in r["windows"]]
        axf.plot(xs, failed, "o", color=f"C{n}", label=f"{tag}")
        axn.plot(xs, [val(w, "xds_p50_ms") for w in r["windows"]], "o", color=f"C{n}",
                 label=f"{tag}: Pilot config -> every ACK p50")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}\n(hollow: the jump; red ring: a leader elected in that step)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    axf.set_ylabel("writes not\nacknowledged (%)")
    axf.set_ylim(-5, 105)
    axn.set_ylabel("ms")
    axn.set_title("xDS share (push + ACK)", fontsize=9)
    axn.set_ylim(bottom=0)
    axn.legend(fontsize=6)
    delays = sorted({w["delay_ms"] for r in runs.values() for w in r["windows"]})
    for a in (ax, axf, axn):
        a.set_xscale("symlog", linthresh=50, linscale=0.5)
        a.set_xlim(-10, max(delays + [100]) * 1.4)
        a.set_xticks(delays, [f"{d:g}" for d in delays], fontsize=7)
        a.minorticks_off()
    for a in (axf, axn):
        a.set_xlabel("one-way delay on the leader's link (ms; linear to 50, log above)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rule_files(paths: Sequence[Any]) -> str:
    """The Istio YAML of ``paths`` (a lab's ``--rules FILE...``), one stream; raises
    ValueError naming a file that cannot be read."""
    texts = []
    for p in paths:
        try:
            texts.append(open(p, encoding="utf-8").read())
        except OSError as e:
            raise ValueError(f"--rules {p}: {e.strerror}") from None
    return "\n---\n".join(texts)


def with_replicas(spec: Any, counts: dict[str, int], service: str = "echo") -> Any:
    """``spec`` (a MeshSpec) with only the first ``counts[version]`` instances of each version
    of ``service`` (a lab's ``--replicas v1=1,v2=1``); at most the topology's count, >= 1."""
    svc = next(s for s in spec.services if s.name == service)
    have = {v.name: v.replicas for v in svc.versions}
    for v, n in counts.items():
        if v not in have or not 1 <= n <= have[v]:
            raise ValueError(f"--replicas {v}={n}: allowed versions {', '.join(have)} with 1 to their count in "
                             f"{spec.source or 'the topology'} ({', '.join(f'{k}<={c}' for k, c in have.items())})")
    keep = tuple(i for i in spec.instances if i.service != service
                 or int(i.instance.rsplit("-", 1)[1]) < counts.get(i.version, have[i.version]))
    versions = tuple(replace(v, replicas=counts.get(v.name, v.replicas)) for v in svc.versions)
    services = tuple(replace(s, versions=versions) if s.name == service else s for s in spec.services)
    return replace(spec, instances=keep, services=services)
