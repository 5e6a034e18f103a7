"""Proxy benchmark, side by side in one run on loopback.

    sudo ./minimesh bench proxy [--duration 5] [--only envoy,minimesh] [--loads 1000rps] [--no-pin]
    sudo ./minimesh bench proxy --python-cost 20000

Targets, all in front of the same upstream (nginx answering a fixed 3-byte body):
direct (no proxy), real Envoy (tests/configs/bench.yaml, ``--concurrency 1``), nginx as a
reverse proxy (1 worker, upstream keepalive), minimesh-proxy one hop (same bench.yaml), and
minimesh-proxy two hops (client sidecar -> server sidecar -> upstream, both bench.yaml).
Load: h2load (Debian nghttp2-client) over HTTP/1.1 keep-alive at fixed concurrency 16 and
64 (closed loop), plus a paced 1000 rps run (10 connections x 100 rps, ``--rps``).
Per run: rps, p50/p99 latency (from h2load's per-request log), proxy CPU-seconds per 1000
requests (utime+stime of the proxy's process tree from /proc) and proxy RSS after the run.
With 2+ cores the proxy is pinned to the last core and load generator + upstream to the
others (``taskset``), so proxy CPU is not shared with the load it serves.

``--python-cost N`` measures instead the minimesh-proxy's own Python work per request,
without sockets or a load generator: N keep-alive requests through the real connection
manager, router, upstream connection and access log (bench.yaml) on fake transports, CPU
time per request (best and median of 5 rounds).  It is far less noisy than the loopback
runs on a shared machine, which include the kernel's TCP work and the loop's wake-ups.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.configs import render  # noqa: E402  (sys.path set above)
from tests.support.ports import free_ports  # noqa: E402  (sys.path set above)
from tests.support.procs import ProxyProcess, start_proxy  # noqa: E402  (sys.path set above)

TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "envoy", "nginx", "minimesh", "minimesh-2hop")
NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/cb; proxy_temp_path {dir}/pt; fastcgi_temp_path {dir}/ft;
  uwsgi_temp_path {dir}/ut; scgi_temp_path {dir}/st;
  keepalive_requests 10000000;
  {body}
}}
"""
NGINX_ORIGIN = 'server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; return 200 "ok\\n"; }} }}'
NGINX_PROXY = """upstream origin {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://origin;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""


# -- processes ------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_s(pids: Sequence[int]) -> float:
    total = 0
    for p in pids:
        for q in tree(p):
            try:
                f = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(f[11]) + int(f[12])
    return total / TICKS


def rss_mb(pids: Sequence[int]) -> float:
    kb = 0
    for p in pids:
        for q in tree(p):
            try:
                m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{q}/status").read_text())
            except OSError:
                continue
            kb += int(m.group(1)) if m else 0
    return kb / 1024


@contextmanager
def nginx(body: str, pin: list[str]) -> Iterator[int]:
    d = Path(tempfile.mkdtemp(prefix="mmt-nginx-"))
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, body=body))
    p = subprocess.Popen([*pin, "nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = int(re.search(r"listen 127.0.0.1:(\d+)", body).group(1))
        wait_port(port, p)
        yield p.pid
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT)  # graceful stop of master and worker
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 10) -> None:
    import socket
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
            raise RuntimeError(f"exited with {proc.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s}s")


def proxy(kind: str, listen: int, upstream: int, pin: list[str]) -> ProxyProcess:
    admin = free_ports(1)[0]
    text = render("bench.yaml", {"LISTEN_PORT": listen, "ADMIN_PORT": admin, "UPSTREAM_PORT": upstream})
    return start_proxy(kind, text, admin, prefix=pin)


# -- load -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    name: str
    conns: int
    rps_per_conn: int | None = None  # paced (h2load --rps) when set


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    done: int
    errors: int  # non-2xx answers + failed/errored/timed-out requests


def h2load(url: str, load: Load, duration_s: float, pin: list[str], log: Path) -> Result:
    argv = [*pin, "h2load", "--h1", "-t", "1", "-m", "1", "-c", str(load.conns),
            "-D", str(max(1, round(duration_s))), "--log-file", str(log), url]
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    if load.rps_per_conn:
        argv[argv.index("-D"):argv.index("-D")] = ["--rps", str(load.rps_per_conn)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60).stdout
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    d = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and d and s):
        raise RuntimeError(f"h2load output not understood:\n{out[-1500:]}")
    lat = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") == 2)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [0.0] * 99
    done = int(d.group(1))
    errors = sum(int(x) for x in s.groups()) + sum(int(x) for x in d.groups()[1:])
    return Result(float(m.group(2)), q[49] / 1000, q[98] / 1000, done, errors)


LOADS = (Load("c16", 16), Load("c64", 64), Load("1000rps", 10, 100))


# -- Python cost per request, no sockets ---------------------------------------------------

class _FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


_REQUEST = b"GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nuser-agent: h2load nghttp2/1.52.0\r\naccept: */*\r\n\r\n"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 10:30:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


async def _python_cost(n: int) -> list[float]:
    import yaml
    from types import SimpleNamespace
    from proxy.config.bootstrap import parse_bootstrap
    from proxy.http.hcm import DownstreamConnection, HcmConfig
    from proxy.server import Server
    from proxy.upstream.pool import UpstreamConnection
    cfg = yaml.safe_load(render("bench.yaml", {"LISTEN_PORT": 1, "ADMIN_PORT": 2, "UPSTREAM_PORT": 3}))
    server = Server(parse_bootstrap(cfg))
    ctx = server.ctx
    for c in server.bootstrap.clusters:
        ctx.cluster_manager.add_or_update_cluster(c)
    await ctx.cluster_manager.initialize()
    spec = server.bootstrap.listeners[0]
    down = DownstreamConnection(HcmConfig(spec.filter, ctx, spec.name), SimpleNamespace(connections=set()),
                                ctx.stats.listener(spec.name), 1 << 20)
    down_t = _FakeTransport()
    down.connection_made(down_t)
    cluster = ctx.cluster_manager.get("upstream")
    pool = cluster.hosts[0].pool
    up = UpstreamConnection(pool)
    up.connection_made(_FakeTransport())
    pool.conns.add(up)           # as if connected: the pooled keep-alive connection
    cluster.cx_count += 1
    pool.idle.append(up)
    rounds = []
    for _ in range(6):           # round 0 warms up
        t0 = time.process_time()
        for _ in range(n):
            down.data_received(_REQUEST)
            up.data_received(_RESPONSE)
        rounds.append((time.process_time() - t0) / n * 1e6)
        if not (down_t.out and down_t.out[-1].startswith(b"HTTP/1.1 200 ") and down_t.out[-1].endswith(b"ok\n")):
            raise RuntimeError(f"unexpected answer: {down_t.out[-1:]!r}")
        down_t.out.clear()
        up.transport.out.clear()
        for lg in ctx.access_logs.loggers.values():
            lg.buf.clear()
    await server.stop()
    return rounds[1:]


def python_cost(n: int) -> int:
    import asyncio
    us = sorted(asyncio.run(_python_cost(n)))
    print(f"minimesh-proxy Python work per keep-alive request (bench.yaml, no sockets, {n} requests x 5): "
          f"best {us[0]:.1f} us, median {us[2]:.1f} us")
    return 0


# -- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured run (default 5)")
    ap.add_argument("--only", default=",".join(TARGETS), help="comma list of " + ", ".join(TARGETS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the one with median rps is shown")
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--python-cost", type=int, metavar="N", help="only measure the Python work per request "
                    "(N requests on fake transports, no sockets)")
    ap.add_argument("--loads", default=",".join(x.name for x in LOADS),
                    help="comma list of " + ", ".join(x.name for x in LOADS) + " (1000rps: the paced CPU run)")
    a = ap.parse_args(argv)
    if a.python_cost:
        return python_cost(a.python_cost)
    targets = [t for t in a.only.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"--only: unknown target(s) {', '.join(sorted(unknown))}; allowed: {', '.join(TARGETS)}")
    loads = [x for x in LOADS if x.name in a.loads.split(",")]
    unknown = set(a.loads.split(",")) - {x.name for x in LOADS}
    if unknown or not loads:
        ap.error(f"--loads: unknown load(s) {', '.join(sorted(unknown))}; allowed: {', '.join(x.name for x in LOADS)}")
    for tool in ("h2load", "nginx", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}: run the benchmark as `sudo ./minimesh bench proxy`, which installs it",
                  file=sys.stderr)
            return 2
    cores = os.cpu_count() or 1
    pin_proxy = [] if a.no_pin or cores < 2 else ["taskset", "-c", str(cores - 1)]
    pin_load = [] if a.no_pin or cores < 2 else ["taskset", "-c", f"0-{cores - 2}"]
    print(f"# loopback, {cores} cores, proxy pinned {pin_proxy[2:] or 'no'}, load+upstream pinned "
          f"{pin_load[2:] or 'no'}; {a.duration:g}s per run, median of {a.repeat}; h2load --h1 keep-alive")
    hdr = f"{'target':<14}{'load':<9}{'rps':>9}{'p50 ms':>8}{'p99 ms':>8}{'cpu-s/1k':>9}{'rss MB':>8}{'errors':>7}"
    print(hdr)
    print("-" * len(hdr))
    work = Path(tempfile.mkdtemp(prefix="mmt-bench-"))
    failures = 0
    results: dict[tuple[str, str], Result] = {}
    try:
        with ExitStack() as outer:
            origin_port, = free_ports(1)
            outer.enter_context(nginx(NGINX_ORIGIN.format(port=origin_port), pin_load))
            for target in targets:
                try:
                    with ExitStack() as st:
                        pids, port = start_target(st, target, origin_port, pin_proxy)
                        url = f"http://127.0.0.1:{port}/"
                        h2load(url, Load("warm", 16), 1.0, pin_load, work / "warm.tsv")
                        for load in loads:
                            runs = []
                            for _ in range(a.repeat):
                                c0 = cpu_s(pids)
                                r = h2load(url, load, a.duration, pin_load, work / "log.tsv")
                                runs.append((r, cpu_s(pids) - c0))
                            r, used = sorted(runs, key=lambda x: x[0].rps)[len(runs) // 2]
                            results[(target, load.name)] = r
                            cpu_k = f"{used / (r.done / 1000):9.3f}" if pids and r.done else f"{'-':>9}"
                            rss = f"{rss_mb(pids):8.1f}" if pids else f"{'-':>8}"
                            spread = ""
                            if pids and len(runs) > 1 and all(x.done for x, _ in runs):
                                k = sorted(u / (x.done / 1000) for x, u in runs)
                                spread = f"  (cpu-s/1k {k[0]:.3f}-{k[-1]:.3f} over {len(runs)} runs)"
                            print(f"{target:<14}{load.name:<9}{r.rps:9.0f}{r.p50_ms:8.2f}{r.p99_ms:8.2f}"
                                  f"{cpu_k}{rss}{r.errors:7d}{spread}", flush=True)
                except Exception as e:  # a target that cannot run is reported, the others go on
                    failures += 1
                    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                    print(f"{target:<14}FAILED: {why}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get(("direct", "1000rps"))
    if base is not None:
        for target in targets:
            r = results.get((target, "1000rps"))
            if target == "direct" or r is None:
                continue
            hops = 2 if target.endswith("2hop") else 1
            print(f"# {target}: added latency at 1000 rps, per hop: p50 +{(r.p50_ms - base.p50_ms) / hops:.2f} ms, "
                  f"p99 +{(r.p99_ms - base.p99_ms) / hops:.2f} ms")
    print("# cpu-s/1k: proxy CPU-seconds per 1000 requests (0.165 = 0.165 core at 1000 rps); "
          "rss: proxy process tree after the run; 2hop: both sidecars summed")
    return 1 if failures else 0


def start_target(st: ExitStack, target: str, origin: int, pin: list[str]) -> tuple[list[int], int]:
    """Start ``target`` in front of the origin; (proxy pids to measure, port to load)."""
    if target == "direct":
        return [], origin
    port, = free_ports(1)
    if target == "nginx":
        return [st.enter_context(nginx(NGINX_PROXY.format(port=port, upstream=origin), pin))], port
    if target in ("envoy", "minimesh"):
        return [st.enter_context(proxy(target, port, origin, pin)).pid], port
    server_port, = free_ports(1)
    server = st.enter_context(proxy("minimesh", server_port, origin, pin))
    client = st.enter_context(proxy("minimesh", port, server_port, pin))
    return [client.pid, server.pid], port


if __name__ == "__main__":
    sys.exit(main())
