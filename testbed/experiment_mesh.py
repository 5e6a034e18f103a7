"""Experiment helpers that put Pilot next to an etcd cluster started by
:func:`testbed.experiment.start_etcd` (no sidecars needed):

    events = start_pilot(ctx, runner, "c1", "default")     # Pilot's Discovery watches the registry
    changes = RegistryChanger(ctx, "c2", url, "default").start(t0, t1, every_s=1.0)
    ...; changes.stop(); ctx.stop("pilot-default")
    lat = pilot_seen_latency(data.events, "default")        # registry write -> Pilot's new config

Each change puts a new instance ``probe/v1/p<i>`` under the registry prefix (``etcdctl put`` in
the given host, not waiting for it), recorded as a ``registry``/``change`` event. Pilot
commits a new config (event ``config``, reason ``endpoints``, ``endpoints`` = how many it
knows) for every change its watch delivers: that commit is what triggers its xDS pushes, so
the write-to-commit time is the registry's share of the push latency.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from typing import Any, Sequence

from testbed.mesh.registry import DEFAULT_PREFIX, endpoint_json
from testbed.mesh.model import Endpoint

__all__ = ["start_pilot", "pilot_socket", "import_pilot_events", "RegistryChanger", "pilot_seen_latency",
           "PilotWatcher", "plot_pilot_latency"]

PILOT_PORT = 15010


def import_pilot_events(ctx: Any, path: os.PathLike, **extra: Any) -> int:
    """Pilot's events JSONL appended to the history (source ``pilot``, run time from the
    wall-clock ``t``, ``extra`` added to each); returns how many."""
    n = 0
    if not os.path.exists(path):
        return 0
    for line in open(path, encoding="utf-8"):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        kind = str(d.pop("event", d.pop("kind", "event")))
        wall = d.pop("t", None)
        t = wall - ctx.clock.wall0 if isinstance(wall, (int, float)) else ctx.clock.now()
        ctx.history.event("pilot", kind, t=t, **d, **extra)
        n += 1
    return n


def start_pilot(ctx: Any, runner: Any, host: str, tag: str, endpoints: Sequence[str] | None = None) -> str:
    """``python -m testbed.mesh.pilot_proc`` in ``host`` watching ``runner``'s cluster through
    ``endpoints`` (first one first; default: every member in order); no services, no rules.
    Its events are imported into the history (``config=tag``) at the end of the run.
    Returns the process name (``ctx.stop`` it before stopping etcd)."""
    d = ctx.out / f"pilot-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    sock = pilot_socket(tag)
    cfg = {"services": [], "rules": [], "etcd": list(endpoints or [m.client_url for m in runner.cluster.members]),
           "listen": [ctx.tb.ip(host), PILOT_PORT], "events": str(d / "pilot-events.jsonl"),
           "socket": sock, "applied": str(d / "applied.jsonl"), "hold_s": 15, "citadel": None}
    (d / "pilot.json").write_text(json.dumps(cfg, indent=1))
    name = f"pilot-{tag}"
    ctx.popen(host, [ctx.python, "-m", "testbed.mesh.pilot_proc", str(d / "pilot.json")], name)
    ctx.closers.append(lambda: os.path.exists(sock) and os.unlink(sock))
    ctx.finishers.append(lambda: import_pilot_events(ctx, d / "pilot-events.jsonl", config=tag))
    ctx.wait_tcp(host, ctx.tb.ip(host), PILOT_PORT, 15, proc=name)
    return name


def pilot_socket(tag: str) -> str:
    """Where :func:`start_pilot` puts Pilot's admin socket (short: AF_UNIX paths <= 107 bytes)."""
    return f"/tmp/mmpilot-{os.getpid()}-{tag}.sock"


class PilotWatcher:
    """Polls Pilot's admin ``/status`` (from the root namespace, through its unix socket)
    every ``every_s``; records ``pilot``/``discovery`` events (healthy, endpoints: instance
    names Pilot serves) whenever either changes, and ``pilot``/``status_error`` when the
    socket does not answer."""

    def __init__(self, ctx: Any, tag: str, every_s: float = 0.25):
        from testbed.mesh.pilot_proc import AdminClient
        self.ctx, self.every_s = ctx, every_s
        self.client = AdminClient(pilot_socket(tag), timeout_s=1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "PilotWatcher":
        self._thread.start()
        return self

    def _loop(self) -> None:
        last: Any = None
        while not self._stop.wait(self.every_s):
            try:
                st = self.client.get("/status")
                now = (bool(st.get("discovery_healthy")), tuple(sorted(st.get("endpoints", []))))
            except Exception as e:  # noqa: BLE001 - recorded, polling goes on
                now = ("error", str(e)[:200])
            if now != last:
                if now[0] == "error":
                    self.ctx.event("pilot", "status_error", error=now[1])
                else:
                    self.ctx.event("pilot", "discovery", healthy=now[0], endpoints=list(now[1]))
                last = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class RegistryChanger:
    """Every ``every_s`` between t0 and t1 (run time), ``etcdctl put`` of a new probe
    instance from ``host`` to ``url``; each recorded as a ``registry``/``change`` event
    (config, seq, t_invoke) and, once etcdctl exits, ``registry``/``change_done`` (rc; the
    time is when it was noticed, not when etcdctl exited)."""

    def __init__(self, ctx: Any, host: str, url: str, tag: str, timeout_s: float = 20.0):
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
            ep = Endpoint("probe", "v1", f"p{i}", self.host, "10.255.0.1", 10000 + i)
            key = f"{DEFAULT_PREFIX}probe/v1/p{i}"
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

    def stop(self, wait_s: float = 20.0) -> None:
        """Stop issuing changes; wait for pending ones (killed after ``wait_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._reap(wait_s)


def pilot_seen_latency(events: Sequence[Any], tag: str) -> list[dict[str, Any]]:
    """One dict per registry change of config ``tag``: seq, t (invoke), ok (etcdctl rc 0) and
    seen_ms: from the write to Pilot's first endpoints config that knows >= k probe instances,
    k = how many acknowledged puts were invoked up to this one (None: Pilot never saw it)."""
    changes = sorted((e for e in events if e.source == "registry" and e.kind == "change"
                      and e.details.get("config") == tag), key=lambda e: e.t)
    rc = {e.details["seq"]: e.details.get("rc") for e in events if e.source == "registry"
          and e.kind == "change_done" and e.details.get("config") == tag}
    configs = sorted((e for e in events if e.source == "pilot" and e.kind == "config"
                      and e.details.get("config") == tag and e.details.get("reason") == "endpoints"),
                     key=lambda e: e.t)
    out, k = [], 0
    for c in changes:
        seq = c.details["seq"]
        ok = rc.get(seq) == 0
        k += ok
        seen = next((e.t for e in configs if e.t >= c.t and int(e.details.get("endpoints", 0)) >= k), None) \
            if ok else None
        out.append({"seq": seq, "t": c.t, "ok": ok, "seen_ms": None if seen is None else (seen - c.t) * 1000})
    return out


def plot_pilot_latency(path: os.PathLike, runs: dict[str, dict[str, Any]], title: str) -> None:
    """Per timeout set: write p50 and Pilot's registry-change p50 (ms, log scale) per delay step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for tag, r in runs.items():
        xs = [str(w["delay_ms"]) for w in r["windows"]]
        for key, style in (("p50_ms", "-o"), ("pilot_p50_ms", "--s")):
            ax.plot(xs, [w[key] if w[key] is not None else float("nan") for w in r["windows"]], style,
                    label=f"{tag}: {'write' if key == 'p50_ms' else 'registry change -> Pilot config'} p50")
    ax.set_yscale("log")
    ax.set_xlabel("one-way delay on the leader's link (ms; last step: the jump)")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
