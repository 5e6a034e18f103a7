"""Mesh benchmark.

    sudo ./minimesh bench mesh [--sizes 10,50,100] [--applies 10]
                                              [--boots 3] [--sidecar minimesh] [--json OUT]

1. **apply -> ACK.** One Pilot (in this process, its own event-loop thread) and N sidecar
   processes (``python -m proxy``, or ``--sidecar envoy``) on loopback: one process per
   sidecar, each a client node with its outbound listener on its own 127.0.0.1 port. The
   sidecars share Mininet-free loopback because 100 Mininet hosts would measure Mininet,
   not Pilot. For each of ``--applies`` applies (a VirtualService alternating 90/10 and
   10/90), the latency of every sidecar is Pilot's ``ack`` event of the new route version
   minus the time ``apply`` was called. Reported: p50/p99/max over all sidecars x applies,
   and the mean time until *every* sidecar has ACKed.
2. **RSS per sidecar** (VmRSS from /proc after the applies): median and max.
3. **Bookinfo boot** on this machine's cores (needs root): topologies/bookinfo.yaml with
   node names prefixed per run; time from ``Mesh.start()`` to ready (all six instances
   registered in etcd, every sidecar ACKed), and the Mininet build before it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.mesh.etcd.cluster import free_ports  # noqa: E402  (sys.path set above)
from testbed.mesh.model import Endpoint, ServiceSpec, VersionSpec  # noqa: E402  (sys.path set above)
from testbed.mesh.pilot.server import Pilot  # noqa: E402  (sys.path set above)
from testbed.mesh.pilot.resources import NodeInfo, sidecar_bootstrap  # noqa: E402  (sys.path set above)
from tests.support.pilot import SUBSETS, weighted  # noqa: E402  (topologies/mesh-lab rule files)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PilotThread:
    """Pilot on 127.0.0.1 in a background event loop; events kept in memory."""

    def __init__(self) -> None:
        self.route_acks: dict[str, dict[str, float]] = {}   # generation -> node -> first ACK t
        self.lock = threading.Lock()
        eps = [Endpoint("echo", v, f"echo-{v}-{i}", "h", f"127.0.1.{i + 1}", 8080)
               for v in ("v1", "v2") for i in range(2)]
        self.pilot = Pilot([ServiceSpec("echo", 8080, (VersionSpec("v1", 2), VersionSpec("v2", 2)))],
                           eps, on_event=self._on_event, hold_s=15)
        self.pilot.apply_text(SUBSETS + "---\n" + weighted(90, 10), "bench.yaml")
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.pilot.start("127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def _on_event(self, ev: dict) -> None:
        # called in Pilot's thread: keep it cheap (a dict insert), poll without copying
        if ev["event"] == "ack" and ev["type"] == "routes":
            gen = ev["version"].split("-", 1)[0]
            with self.lock:
                self.route_acks.setdefault(gen, {}).setdefault(ev["node"], ev["t"])

    def acked_routes(self, generation: int | None = None) -> dict[str, float]:
        """node -> time of its first route ACK of ``generation`` (None: of any)."""
        with self.lock:
            if generation is not None:
                return dict(self.route_acks.get(str(generation), {}))
            return {n: t for acks in self.route_acks.values() for n, t in acks.items()}

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.pilot.stop()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_sidecars(n: int, pilot_port: int, workdir: Path, kind: str) -> list[subprocess.Popen]:
    ports = free_ports(2 * n)
    procs = []
    for i in range(n):
        node = NodeInfo.make("127.0.0.1", f"bench{i}", "client", outbound_address="127.0.0.1",
                             outbound_port=ports[2 * i])
        boot = workdir / f"sidecar{i}.json"
        boot.write_text(json.dumps(sidecar_bootstrap(node, ("127.0.0.1", pilot_port), ports[2 * i + 1])))
        if kind == "envoy":
            argv = [str(Path(sys.executable).parent / "envoy"), "-c", str(boot), "--concurrency", "1",
                    "--disable-hot-restart", "--log-level", "error"]
        else:
            argv = [sys.executable, "-m", "proxy", "-c", str(boot), "--log-level", "error"]
        procs.append(subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    return procs


def bench_apply(n: int, applies: int, kind: str) -> dict:
    pt = PilotThread()
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mmbench-") as tmp:
            t0 = time.monotonic()
            procs = start_sidecars(n, pt.port, Path(tmp), kind)
            deadline = time.monotonic() + 60 + n
            while len(pt.acked_routes()) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(pt.acked_routes())} of {n} sidecars got routes")
                dead = [p for p in procs if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{len(dead)} sidecar(s) exited (status {dead[0].returncode})")
                time.sleep(0.05)
            startup = time.monotonic() - t0
            time.sleep(0.5)
            lat, every = [], []
            for k in range(applies):
                w = 10 if k % 2 == 0 else 90
                t_apply = time.time()
                pt.pilot.apply_text(weighted(w, 100 - w), "bench.yaml")
                gen = pt.pilot.generation
                deadline = time.monotonic() + 10
                while True:
                    fresh = pt.acked_routes(gen)
                    if len(fresh) >= n or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                if len(fresh) < n:
                    raise RuntimeError(f"apply {k}: only {len(fresh)} of {n} sidecars ACKed in 10 s")
                ms = [(t - t_apply) * 1000 for t in fresh.values()]
                lat += ms
                every.append(max(ms))
                time.sleep(0.3)
            rss = [rss_kb(p.pid) / 1024 for p in procs]
            return {"sidecars": n, "kind": kind, "startup_s": round(startup, 2),
                    "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                    "max_ms": round(max(lat), 1), "all_acked_mean_ms": round(statistics.mean(every), 1),
                    "rss_median_mb": round(statistics.median(rss), 1), "rss_max_mb": round(max(rss), 1)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        pt.stop()


def bench_bookinfo_boot(kind: str) -> dict:
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology

    p = "mz" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    nodes = ("u1", "pp", "det", "rv1", "rv2", "rv3", "rat", "e1", "e2", "e3", "cp", "s1")
    text = re.sub(r"\b(" + "|".join(nodes) + r")\b", lambda m: p + m.group(1),
                  (REPO / "topologies/bookinfo.yaml").read_text())
    text = text.replace("rules: [bookinfo/", f"rules: [{REPO}/topologies/bookinfo/")
    topo = parse_topology(text, "bookinfo.yaml")
    t0 = time.monotonic()
    with Testbed(topo, link_backend="auto", out=open(os.devnull, "w")) as tb:
        t1 = time.monotonic()
        mesh = Mesh(tb, topo.sections["mesh"], sidecar_default=kind, publish=False)
        with mesh:
            t2 = time.monotonic()
            rss = [rss_kb(i.pids["sidecar"]) / 1024 for i in mesh.instances()]
            code, _ = mesh.curl(f"{p}u1", "http://productpage:9080/productpage")
    return {"kind": kind, "mininet_s": round(t1 - t0, 2), "mesh_boot_s": round(t2 - t1, 2),
            "first_request": code, "sidecar_rss_median_mb": round(statistics.median(rss), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--applies", type=int, default=10)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--sidecar", default="minimesh", choices=("minimesh", "envoy"))
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    results: dict = {"cores": os.cpu_count(), "apply": [], "boot": []}
    print("| sidecars | kind | startup s | apply->ACK p50 ms | p99 ms | max ms | all ACKed (mean) ms "
          "| RSS/sidecar median MB | max MB |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for n in (int(x) for x in a.sizes.split(",") if x):
        r = bench_apply(n, a.applies, a.sidecar)
        results["apply"].append(r)
        print(f"| {n} | {r['kind']} | {r['startup_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
              f"| {r['all_acked_mean_ms']} | {r['rss_median_mb']} | {r['rss_max_mb']} |", flush=True)
    if a.boots and os.geteuid() == 0:
        print(f"\n| bookinfo boot ({os.cpu_count()} cores) | Mininet build s | mesh ready s "
              "| first request | sidecar RSS median MB |\n|---|---|---|---|---|", flush=True)
        for i in range(a.boots):
            r = bench_bookinfo_boot(a.sidecar)
            results["boot"].append(r)
            print(f"| run {i + 1} ({r['kind']}) | {r['mininet_s']} | {r['mesh_boot_s']} | {r['first_request']} "
                  f"| {r['sidecar_rss_median_mb']} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
