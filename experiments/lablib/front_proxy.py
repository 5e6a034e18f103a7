"""The tutorial's front-proxy lab, as reusable pieces (experiments/front_proxy.py is made of them).

    site_log = start_website(ctx, "web", probe_from="h1")     # stand-in for gwadvnet20.github.io
    dns = start_dns(ctx, "dns", {SITE: ctx.tb.ip("web")}, clients=("h1", "h2"))
    ctx.popen("h1", proxy_argv("minimesh"), "proxy")          # the seed's YAML, unmodified
    rc, text, req = curl(ctx, "h2")                           # the tutorial's curl, on a terminal

Each piece takes the experiment's :class:`~testbed.run.experiment.Context`: processes are
stopped at the end of the run, the curl is recorded in the run's history as a ``request``
(start, end, status, error), so the availability checker and ``timeline.png`` see it, and
as a milestone event, a packet comment in every capture.

The pure parts (:func:`curl_status`, :func:`read_web_log`, :func:`dns_queries`,
:func:`proxy_argv`) are unit-tested without a network.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from testbed.history import Request
from testbed.net.dns import DnsServer
from testbed.net.running import RunningTestbed
from testbed.paths import REPO
from testbed.run.experiment import Context

__all__ = ["SITE", "LISTEN", "CURL", "PROXIES", "SEED_YAML", "proxy_config", "ENVOY_V3_YAML", "step",
           "proxy_argv", "envoy_binary", "start_website", "start_dns", "run_on_pty", "curl_status", "curl",
           "read_web_log", "dns_queries", "tshark_count"]

SEED_YAML = REPO / "topologies" / "front-proxy" / "envoy.yaml"          # the tutorial's, byte for byte
ENVOY_V3_YAML = REPO / "topologies" / "front-proxy" / "envoy-v3.yaml"   # the same in v3 syntax
SITE = "gwadvnet20.github.io"
LISTEN = ("10.0.0.1", 15001)
CURL = ("curl", "-v", "-H", "Host: google.com", "10.0.0.1:15001/")      # the tutorial's command
PROXIES = ("minimesh", "envoy")
_STATUS = re.compile(r"^< HTTP/[\d.]+ (\d{3})", re.M)


def step(n: int, text: str) -> None:
    print(f"\n=== Step {n}: {text}", flush=True)


def envoy_binary() -> str:
    """Real Envoy: $MINIMESH_ENVOY, else ``envoy`` on PATH, else next to this interpreter."""
    return os.environ.get("MINIMESH_ENVOY") or shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")


def proxy_config(kind: str, config: Path | None = None) -> Path:
    """The YAML the front proxy runs: ``config`` (a student's), else the seed's as it is
    (minimesh-proxy) or its v3 translation (real Envoy)."""
    if config is not None:
        return config
    return SEED_YAML if kind == "minimesh" else ENVOY_V3_YAML


def proxy_argv(kind: str, python: str = sys.executable, config: Path | None = None) -> list[str]:
    """The front proxy's command line: minimesh-proxy on the seed's YAML as it is, or real
    Envoy on the v3 translation (no hot restart; a base id of its own); ``config``: another YAML."""
    path = proxy_config(kind, config)
    if config is not None and not config.is_file():
        raise ValueError(f"--proxy-config {config}: no such file")
    if kind == "minimesh":
        return [python, "-m", "proxy", "--config-path", str(path)]
    if kind == "envoy":
        return [envoy_binary(), "--config-path", str(path), "--concurrency", "1", "--base-id",
                str(os.getpid() % 50000), "--disable-hot-restart", "--log-level", "warning"]
    raise ValueError(f"proxy {kind!r}: allowed {', '.join(PROXIES)}")


def start_website(ctx: Context, host: str, probe_from: str, site: str = SITE, port: int = 80,
                  options: Sequence[str] = ()) -> Path:
    """testbed.apps.website on ``host`` (process ``web``), answering for ``site``; returns
    its request log (<out>/web.jsonl) once ``probe_from`` can connect to it. ``options``:
    the stand-in's knobs (``--nagle``, ``--fail-every N``)."""
    log = ctx.out / "web.jsonl"
    log.unlink(missing_ok=True)
    ip = ctx.tb.ip(host)
    ctx.popen(host, [ctx.python, "-m", "testbed.apps.website", "--bind", ip, "--port", str(port),
                     "--site", site, "--log", str(log), *options], "web")
    ctx.wait_tcp(probe_from, ip, port, proc="web")
    ctx.names[ip] = site
    return log


def start_dns(ctx: Context, host: str, records: dict[str, str], clients: Sequence[str]) -> DnsServer:
    """dnsmasq on ``host`` answering ``records``; ``clients``' resolv.conf point at it.
    Stopped at the end of the run; its query log is under <out>/dns/."""
    dns = DnsServer(ctx.tb, host, records, ctx.out / "dns")
    ctx.closers.append(dns.stop)
    dns.start()
    dns.serve(*clients)
    ctx.names[ctx.tb.ip(host)] = f"dns-{host}"
    return dns


def run_on_pty(tb: RunningTestbed, host: str, argv: Sequence[str], timeout_s: float = 30.0) -> tuple[int, str]:
    """Run ``argv`` on ``host`` with a pseudo-terminal as stdout/stderr, so its output is
    what a student sees in a terminal (curl shows no progress meter); (exit code, text)."""
    master, slave = os.openpty()
    try:
        p = tb.popen(host, list(argv), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    try:
        p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return p.returncode, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def curl_status(text: str) -> int | None:
    """The status of the last response in ``curl -v`` output (``< HTTP/1.1 200 OK``), or None."""
    found = _STATUS.findall(text)
    return int(found[-1]) if found else None


def curl(ctx: Context, host: str, argv: Sequence[str] = CURL, client: str = "curl", service: str = "gwu") \
        -> tuple[int, str, Request]:
    """The tutorial's curl from ``host``, recorded in the history as one request (and as an
    ``experiment`` event, which the captures carry as a packet comment)."""
    assert ctx.history is not None
    t0 = ctx.clock.now()
    ctx.event("experiment", "tutorial_curl", host=host, command=" ".join(argv))
    rc, text = run_on_pty(ctx.tb, host, argv)
    status = curl_status(text)
    req = ctx.history.request(t_start=t0, t_end=ctx.clock.now(), status=status, client=client,
                              service=service, error=None if rc == 0 else f"curl exit status {rc}")
    return rc, text, req


def read_web_log(path: Path) -> list[dict[str, Any]]:
    """The stand-in's request log: one dict per request (peer, method, path, host, headers)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dns_queries(log_text: str, name: str, from_ip: str) -> int:
    """How many A queries for ``name`` from ``from_ip`` dnsmasq logged (``--log-queries``)."""
    return sum(f"query[A] {name} from {from_ip}" in line for line in log_text.splitlines())


def tshark_count(pcap: Path, display_filter: str, *options: str) -> int:
    """Frames of ``pcap`` matching ``display_filter`` (0 when tshark cannot read it)."""
    r = subprocess.run(["tshark", "-r", str(pcap), *options, "-Y", display_filter], capture_output=True, text=True)
    return len(r.stdout.splitlines()) if r.returncode == 0 else 0
