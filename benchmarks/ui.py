"""Cost of the live page (``minimesh up --ui``) on a 20-sidecar mesh.

    sudo ./minimesh bench ui [--instances 19] [--phase-s 20] [--rounds 3] [--rate 100] [--json OUT]

A mesh of ``--instances`` echo instances (one per host, v1 and a 20 % v2) plus the
client's sidecar (20 sidecars by default), built with Mininet as ``up`` builds it, its
Collector and UIServer in this process as ``up --ui`` runs them. One open-loop HTTP
workload (testbed.run.workload, ``--rate`` rps) runs through the client's sidecar for the
whole benchmark, while phases alternate: page closed (no event-stream client) and page open
(``curl -N /events``: one SSE client, a state per second). Per phase:

- CPU of the UI's threads (the aiohttp loop and the collector; /proc/self/task/TID/stat),
  as a share of one core; and of the mesh's processes (sidecars, apps, agents, Pilot), which
  answer the collector's scrapes;
- the workload's p50/p99 latency over the requests sent in the phase.

The phases alternate ``--rounds`` times, so the run-to-run noise of the closed phases is
the yardstick of any p99 change. Results go to docs/performance.md by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.history import History, RunClock, read_history  # noqa: E402  (sys.path set above)
from testbed.run.workload import workload_argv  # noqa: E402  (sys.path set above)

TICKS = os.sysconf("SC_CLK_TCK")


def topology_yaml(n: int) -> str:
    hosts = ["c", "e1", "cp"] + [f"h{i}" for i in range(1, n + 1)]
    v2 = max(1, n // 5)
    v1_hosts = ", ".join(f"h{i}" for i in range(1, n - v2 + 1))
    v2_hosts = ", ".join(f"h{i}" for i in range(n - v2 + 1, n + 1))
    return "\n".join(["name: uibench", "hosts:", *[f"  {h}: {{}}" for h in hosts], "switches:", "  s1: {}",
                      "links:", *[f"  - {{between: [{h}, s1]}}" for h in hosts]]) + f"""
mesh:
  registry: {{members: [e1]}}
  control_plane: {{host: cp}}
  clients: [c]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{replicas: {n - v2}, hosts: [{v1_hosts}]}},
                                                        v2: {{replicas: {v2}, hosts: [{v2_hosts}]}}}}}}
"""


def thread_cpu_s(tids: list[int]) -> float:
    total = 0
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])          # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def pids_cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def mesh_pids(mesh) -> list[int]:
    """Every process of the mesh: apps, sidecars, agents, the client sidecars, Pilot."""
    pids = [p.pid for procs in mesh._procs.values() for p in procs.values()]
    return pids + ([mesh._pilot.pid] if mesh._pilot is not None else [])


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run_phases(tb, mesh, server, hist_path: Path, clock: RunClock, args) -> list[dict]:
    t0 = time.monotonic() - clock.now()
    total = 2 * args.rounds * args.phase_s + 4
    start = clock.now() + 2.0
    wl = tb.popen("c", workload_argv(sys.executable, "http", str(hist_path), t0, args.rate, total, start,
                                     url="http://echo:8080/", client="c", service="echo", timeout=5),
                  cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tids = [t.native_id for t in server._threads if t.native_id is not None]
    phases = []
    clock.sleep_until(start + 1.0)
    try:
        for r in range(args.rounds):
            for kind in ("closed", "open"):
                sse = subprocess.Popen(["curl", "-sN", server.url + "events"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) if kind == "open" else None
                pids = mesh_pids(mesh)
                a, cpu0, ticks0, m0 = clock.now(), thread_cpu_s(tids), server.ticks, pids_cpu_s(pids)
                clock.sleep_until(a + args.phase_s)
                b, cpu1, m1 = clock.now(), thread_cpu_s(tids), pids_cpu_s(pids)
                if sse is not None:
                    sse.terminate()
                    sse.wait()
                phases.append({"round": r, "kind": kind, "t0": a, "t1": b,
                               "ui_cpu_pct": 100 * (cpu1 - cpu0) / (b - a), "ticks": server.ticks - ticks0,
                               "mesh_cpu_pct": 100 * (m1 - m0) / (b - a)})
                print(f"  {kind:6} round {r}: UI CPU {phases[-1]['ui_cpu_pct']:.2f} % of a core, "
                      f"mesh processes {phases[-1]['mesh_cpu_pct']:.1f} %, {phases[-1]['ticks']} ticks", flush=True)
    finally:
        wl.wait(timeout=total + 30)
    return phases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=19)
    ap.add_argument("--phase-s", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import load_topology
    from testbed.ui.collect import Collector
    from testbed.ui.server import UIServer
    work = Path(tempfile.mkdtemp(prefix="uibench-"))
    (work / "t.yaml").write_text(topology_yaml(args.instances))
    topo = load_topology(work / "t.yaml")
    hist_path = work / "history.jsonl"
    clock = RunClock()
    with Testbed(topo, link_backend="userspace", out=open(os.devnull, "w")) as tb, \
            Mesh(tb, topo.sections["mesh"], ready_timeout_s=120) as mesh, History(hist_path, clock=clock) as hist:
        print(f"mesh: {len(mesh.sidecar_nodes())} sidecars", flush=True)
        server = UIServer(Collector(tb, mesh, None, hist, clock), None).start()
        try:
            phases = run_phases(tb, mesh, server, hist_path, clock, args)
        finally:
            server.stop()
    reqs = read_history(hist_path).requests
    for p in phases:
        sel = [r for r in reqs if p["t0"] <= r.t_start < p["t1"]]
        lat = [r.latency_s * 1000 for r in sel if r.ok]
        p.update(requests=len(sel), ok=sum(r.ok for r in sel), p50_ms=pct(lat, 0.5), p99_ms=pct(lat, 0.99))
        print(f"{p['kind']:6} r{p['round']}: UI CPU {p['ui_cpu_pct']:5.2f} %  mesh CPU {p['mesh_cpu_pct']:5.1f} %  "
              f"requests {p['requests']} "
              f"(ok {p['ok']})  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms")
    for kind in ("closed", "open"):
        ps = [p for p in phases if p["kind"] == kind]
        p99s = ", ".join(f"{p['p99_ms']:.1f}" for p in ps)
        print(f"{kind:6}: UI CPU median {statistics.median(p['ui_cpu_pct'] for p in ps):.2f} % "
              f"(max {max(p['ui_cpu_pct'] for p in ps):.2f}); p99 {p99s} ms")
    if args.json:
        doc = {"args": {k: str(v) for k, v in vars(args).items()}, "phases": phases}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
