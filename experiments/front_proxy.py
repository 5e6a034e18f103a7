"""The tutorial's front-proxy section, reproduced step by step on Mininet.

    sudo /tmp/tv/bin/python experiments/front_proxy.py [--quick] [--out DIR] [--proxy minimesh|envoy]

The seed's proxy YAML (topologies/front-proxy/envoy.yaml, copied byte for byte from the
tutorial) runs unmodified on h1, Mininet's first host, where it listens on 10.0.0.1:15001.
A web server on host ``web`` stands in for gwadvnet20.github.io; a DNS server (dnsmasq) on
host ``dns`` answers for that name, and h1's /etc/resolv.conf points at it, so the proxy's
logical_dns cluster resolves it the real way. From h2 the student runs the tutorial's
``curl -v -H 'Host: google.com' 10.0.0.1:15001/`` and gets the stand-in's page; the web
server saw ``Host: gwadvnet20.github.io`` (host_rewrite) coming from 10.0.0.1.

Exit status 0 only if every check holds. ``--proxy envoy`` runs real Envoy 1.40 instead,
on the same config in v3 syntax (envoy-v3.yaml), as a reference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.apps.website import PAGE_MARKER  # noqa: E402
from testbed.capture import Capture  # noqa: E402
from testbed.dns import DnsServer  # noqa: E402
from testbed.net import Testbed  # noqa: E402
from testbed.topology import load_topology  # noqa: E402

TOPOLOGY = REPO / "topologies" / "front-proxy.yaml"
SEED_YAML = REPO / "topologies" / "front-proxy" / "envoy.yaml"
ENVOY_V3_YAML = REPO / "topologies" / "front-proxy" / "envoy-v3.yaml"
SITE = "gwadvnet20.github.io"
LISTEN = ("10.0.0.1", 15001)
CURL = ["curl", "-v", "-H", "Host: google.com", "10.0.0.1:15001/"]  # the tutorial's command


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def step(n: int, text: str) -> None:
    print(f"\n=== Step {n}: {text}", flush=True)


def proxy_argv(kind: str, base_id: int) -> list[str]:
    if kind == "minimesh":
        return [sys.executable, "-m", "proxy", "--config-path", str(SEED_YAML)]
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    return [envoy, "--config-path", str(ENVOY_V3_YAML), "--concurrency", "1",
            "--base-id", str(base_id), "--disable-hot-restart", "--log-level", "warning"]


def wait_listening(tb: Testbed, from_host: str, addr: tuple[str, int], proc: subprocess.Popen,
                   log: Path | None, timeout_s: float) -> bool:
    """True once a TCP connect from ``from_host`` to ``addr`` succeeds (no request sent)."""
    ip, port = addr
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log else ""
            print(f"{proc.args[0]} exited with {proc.returncode}:\n{text}")
            return False
        out = tb.host(from_host).cmd(f"timeout 1 bash -c '</dev/tcp/{ip}/{port}' && echo open")
        if "open" in out:
            return True
        time.sleep(0.2)
    return False


def curl(tb: Testbed, host: str) -> tuple[int, str]:
    """Run the tutorial's curl on ``host`` on a pseudo-terminal, so its output is what a
    student sees in a terminal (no progress meter); returns (exit code, output)."""
    master, slave = os.openpty()
    try:
        p = tb.popen(host, CURL, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
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
    p.wait(30)
    return p.returncode, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def web_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace, work: Path) -> list[Check]:
    checks: list[Check] = []
    topo = load_topology(TOPOLOGY)
    with Testbed(topo, link_backend=args.link_backend) as tb:
        cap = Capture(tb, args.capture).start() if args.capture else None
        try:
            steps(args, work, tb, topo, checks)
        finally:
            if cap is not None:      # before teardown: every tcpdump flushes its file
                cap.stop()
                cap.write_names({**{tb.ip(h): h for h in tb.host_names}, tb.ip("web"): SITE})
        if cap is not None:
            checks.append(capture_check(args.capture / "h1-eth0.pcapng"))
    return checks


def capture_check(pcap: Path) -> Check:
    """h1's capture holds the proxy's DNS query for the site and its rewritten request."""
    def count(flt: str) -> int:
        r = subprocess.run(["tshark", "-r", str(pcap), "-Y", flt], capture_output=True, text=True)
        return len(r.stdout.splitlines()) if r.returncode == 0 else 0
    dns_n = count(f'dns.flags.response == 0 && dns.qry.name == "{SITE}"')
    http_n = count(f'http.request && http.host == "{SITE}"')
    return Check("h1's capture shows the DNS query and the rewritten request", dns_n > 0 and http_n > 0,
                 f"{pcap}: {dns_n} DNS queries, {http_n} requests with Host: {SITE}")


def steps(args: argparse.Namespace, work: Path, tb: Testbed, topo, checks: list[Check]) -> None:
    web_ip, dns_ip = tb.ip("web"), tb.ip("dns")
    step(1, f"network {topo.name}: " + ", ".join(f"{h}={tb.ip(h)}" for h in tb.host_names))

    step(2, f"web server on 'web' ({web_ip}:80) stands in for {SITE}")
    web_log_path = work / "web.jsonl"
    web_proc = tb.popen("web", [sys.executable, "-m", "testbed.apps.website", "--bind", web_ip,
                                "--port", "80", "--site", SITE, "--log", str(web_log_path)],
                        cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    web_up = wait_listening(tb, "h1", (web_ip, 80), web_proc, None, args.ready_timeout)
    checks.append(Check("web server listens on port 80", web_up, f"{web_ip}:80 seen from h1"))
    if not web_up:
        return

    step(3, f"DNS server (dnsmasq) on 'dns' ({dns_ip}): {SITE} -> {web_ip}; h1 and h2 use it")
    dns = DnsServer(tb, "dns", {SITE: web_ip}, work).start()
    dns.serve("h1", "h2")
    print("h1$ cat /etc/resolv.conf\n" + tb.host("h1").cmd("cat /etc/resolv.conf").rstrip())
    print(f"h1$ getent ahostsv4 {SITE}\n" + tb.host("h1").cmd(f"getent ahostsv4 {SITE}").rstrip())
    ips = dns.resolve("h1", SITE)
    checks.append(Check("h1 resolves the site by DNS", ips == [web_ip], f"{SITE} -> {ips}"))
    dns_log_before = len(dns.log())

    step(4, f"front proxy on h1 with the seed's YAML, unmodified ({args.proxy})")
    argv = proxy_argv(args.proxy, 7000 + (args.base_id_offset % 1000))
    print("h1$ " + " ".join(argv))
    proxy_log = work / "proxy.log"
    with open(proxy_log, "wb") as log:
        proxy = tb.popen("h1", argv, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT)
    up = wait_listening(tb, "h2", LISTEN, proxy, proxy_log, args.ready_timeout)
    checks.append(Check("proxy listens on 10.0.0.1:15001", up, "seen from h2" if up else "not listening"))
    if not up:
        return

    step(5, "from h2, the tutorial's request")
    print("h2$ curl -v -H 'Host: google.com' 10.0.0.1:15001/")
    rc, out = curl(tb, "h2")
    print(out.rstrip())
    (work / "curl.txt").write_text(out)
    checks.append(Check("curl succeeds with 200", rc == 0 and "< HTTP/1.1 200" in out, f"curl exit {rc}"))
    checks.append(Check("the page is the stand-in's", f"{PAGE_MARKER} {SITE}" in out,
                        "page text found" if PAGE_MARKER in out else "page text missing"))

    repeats = 0 if args.quick else 10
    if repeats:
        print(f"\n(the same request {repeats} more times)")
        ok_n = sum(rc_i == 0 and "< HTTP/1.1 200" in out_i
                   for rc_i, out_i in (curl(tb, "h2") for _ in range(repeats)))
        checks.append(Check("repeated requests succeed", ok_n == repeats, f"{ok_n}/{repeats} got 200"))

    step(6, "what the web server saw")
    seen = web_log(web_log_path)
    for rec in seen[:3]:
        print(f"  from {rec['peer']}: {rec['method']} {rec['path']}  Host: {rec['host']}")
    checks.append(Check("every request reached the web server", len(seen) == 1 + repeats,
                        f"{len(seen)} requests logged, {1 + repeats} sent"))
    checks.append(Check(f"upstream saw Host: {SITE} (host_rewrite)",
                        bool(seen) and all(r["host"] == SITE for r in seen),
                        ", ".join(sorted({r['host'] for r in seen})) or "nothing"))
    checks.append(Check("requests came through h1 (10.0.0.1)",
                        bool(seen) and all(r["peer"] == LISTEN[0] for r in seen),
                        ", ".join(sorted({r['peer'] for r in seen})) or "nothing"))
    proxy_queries = [line for line in dns.log()[dns_log_before:].splitlines()
                     if f"query[A] {SITE} from {LISTEN[0]}" in line]
    checks.append(Check("the proxy resolved the site through the testbed DNS", bool(proxy_queries),
                        f"{len(proxy_queries)} A queries from h1 after the proxy started"))

    for p in (proxy, web_proc):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
    dns.stop()
    shutil.copy(dns.log_file, work / "dns.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one request instead of eleven")
    ap.add_argument("--out", type=Path, help="keep results.json, curl.txt, web.jsonl, dns.log, proxy.log here")
    ap.add_argument("--capture", type=Path, help="pcapng per host interface here (default <out>/pcap)")
    ap.add_argument("--no-capture", action="store_true", help="no packet capture")
    ap.add_argument("--proxy", choices=("minimesh", "envoy"), default="minimesh")
    ap.add_argument("--link-backend", default="auto", help="auto | netem | userspace")
    ap.add_argument("--ready-timeout", type=float, default=20.0, help="seconds to wait for the proxy")
    ap.add_argument("--base-id-offset", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="mmt-front-proxy-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.no_capture:
        args.capture = None
    elif args.capture is None and args.out is not None:
        args.capture = args.out / "pcap"
    args.capture = args.capture.resolve() if args.capture else None
    try:
        checks = run(args, work)
    except Exception as e:
        checks = [Check("experiment ran", False, f"{type(e).__name__}: {e}")]
    print("\n=== Checks")
    for c in checks:
        print(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
    ok = bool(checks) and all(c.ok for c in checks)
    (work / "results.json").write_text(json.dumps(
        {"experiment": "front_proxy", "proxy": args.proxy, "quick": args.quick, "passed": ok,
         "checks": [asdict(c) for c in checks]}, indent=2) + "\n")
    print(f"\n{'PASS' if ok else 'FAIL'}: front-proxy section" + (f" (results in {work})" if args.out else ""))
    if args.capture:
        print(f"captures: {args.capture}/*.pcapng; the proxy's traffic:\n"
              f"  tshark -r {args.capture}/h1-eth0.pcapng -d tcp.port==15001,http -Y 'http || dns'")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
