"""``minimesh demo``: the README's main job, a short tour with results and captures.

Three parts, one results directory (``--out``, default ./results/demo-<timestamp>):

1. **delay**: builds ``topologies/line3.yaml`` (or, if the checkout has none, Mininet's
   stock ``single,3`` with h1-s1 shaped to 10 ms), pings h1 -> h2 and compares the median
   RTT with the configured one (twice the sum of one-way delays along the path); then,
   while a ping flows, changes the first link's delay with ``link-set`` and compares the
   RTTs sent after the change with the new configuration (``--tolerance-ms``, 2 ms);
2. **front_proxy**: ``experiments/front_proxy.py --quick`` (the tutorial's Envoy sample, then
   an open-loop workload through it while the web server's link is delayed);
3. **canary**: ``experiments/canary.py --quick`` (5 % to v2, measured split with its
   99.9 % interval);

parts 2 and 3 with packet capture (pcapng per host interface under <part>/pcap). Then a
summary: first the demo's report.html (each part's verdict, linking the part's own
self-contained report.html, docs/ui.md), then each part's verdict and key number, where results,
plots and captures are, and the tshark/wireshark commands to open them. Exit status 1 if any part fails.
``--only PART`` (repeatable) runs a subset; ``--link-backend`` as for ``up``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.cli.subcommand import BACKENDS, Subcommand, load_topology_or_exit
from testbed.net.lifecycle import EXIT_FAIL, EXIT_OK
from testbed.net.lifecycle import Terminated, require_root, run_testbed, teardown_signals
from testbed.net.running import RunningTestbed
from testbed.paths import REPO, hand_over_tree, user_dir

__all__ = ["SUBCOMMANDS", "parse_ping", "path_between", "Measurement", "Part", "delay_part",
           "front_proxy_part", "canary_part", "format_summary", "PARTS"]

DEFAULT_TOPOLOGY = REPO / "topologies" / "line3.yaml"
PARTS = ("delay", "front_proxy", "canary")
PART_TIMEOUT_S = 150.0
OPEN_WITH = {   # part -> (capture to open first, tshark options, what to do in Wireshark)
    "front_proxy": ("h1-eth0.pcapng", "-d tcp.port==15001,http -Y 'http || dns'",
                    "the proxy's host; Decode As: TCP port 15001 -> HTTP"),
    "canary": ("c0-eth0.pcapng", "-Y 'http.request && tcp.dstport == 8080'",
               "the client's host; Statistics > Conversations: requests per echo instance"),
}
_PING_LINE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms")


@dataclass(frozen=True)
class Measurement:
    label: str
    configured_ms: float
    samples: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def ok(self, tolerance_ms: float) -> bool:
        return bool(self.samples) and abs(self.median_ms - self.configured_ms) <= tolerance_ms


def parse_ping(text: str) -> list[tuple[float, int, float]]:
    """``ping -D -n`` output -> [(receive unix time, icmp_seq, rtt ms)]."""
    out = []
    for line in text.splitlines():
        m = _PING_LINE.match(line.strip())
        if m:
            out.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
    return out


def path_between(links: list[tuple[str, str]], a: str, b: str) -> list[tuple[str, str]]:
    """The hops (x, y) of a shortest path a -> b over undirected ``links`` (BFS)."""
    adj: dict[str, list[str]] = {}
    for x, y in links:
        adj.setdefault(x, []).append(y)
        adj.setdefault(y, []).append(x)
    prev: dict[str, str | None] = {a: None}
    queue = deque([a])
    while queue:
        n = queue.popleft()
        for m in adj.get(n, []):
            if m not in prev:
                prev[m] = n
                queue.append(m)
    if b not in prev:
        raise ValueError(f"no path from {a} to {b}")
    hops: list[tuple[str, str]] = []
    node, back = b, prev[b]
    while back is not None:
        hops.append((back, node))
        node, back = back, prev[back]
    return hops[::-1]


def configured_rtt(tb: RunningTestbed, hops: list[tuple[str, str]]) -> float:
    total = 0.0
    for x, y in hops:
        there, back = tb.control.shapes(x, y)
        total += there.delay_ms + back.delay_ms
    return total


def start_ping(tb: RunningTestbed, src: str, dst: str, count: int, interval: float) -> Any:
    return tb.popen(src, ["ping", "-D", "-n", "-c", str(count), "-i", str(interval), "-W", "2", tb.ip(dst)],
                    text=True)


def finish_ping(proc: Any, count: int, interval: float) -> list[tuple[float, int, float]]:
    out, _ = proc.communicate(timeout=count * interval + 10)
    return parse_ping(out)


def ping(tb: RunningTestbed, src: str, dst: str, count: int, interval: float) -> list[tuple[float, int, float]]:
    return finish_ping(start_ping(tb, src, dst, count, interval), count, interval)


def run_demo(tb: RunningTestbed, tolerance_ms: float, new_delay_ms: float) -> list[Measurement]:
    hosts = tb.host_names
    a, b = hosts[0], hosts[1]
    hops = path_between([(x, y) for x, y, _ in tb.control.links()], a, b)
    ping(tb, a, b, 2, 0.2)  # warm-up: ARP, emulator start
    results = []

    replies = ping(tb, a, b, 20, 0.1)
    results.append(Measurement(f"ping {a} -> {b}", configured_rtt(tb, hops),
                               tuple(r for _, _, r in replies)))

    x, y = hops[0]
    flowing = start_ping(tb, a, b, 40, 0.05)
    time.sleep(1.0)
    t_asked = time.time()
    tb.set_link(x, y, delay=f"{new_delay_ms:g}ms")
    t_done = time.time()  # set_shapes is synchronous: in force from here
    print(f"*** live: link-set {x} {y} delay={new_delay_ms:g}ms  (while the ping runs)", file=sys.stderr)
    replies = finish_ping(flowing, 40, 0.05)
    after = tuple(r for t_recv, _, r in replies if t_recv - r / 1000 > t_done)
    before = tuple(r for t_recv, _, r in replies if t_recv < t_asked)
    results.append(Measurement("continuous ping, before the change",
                               results[0].configured_ms, before))
    results.append(Measurement(f"same ping, after link-set {x} {y} delay={new_delay_ms:g}ms",
                               configured_rtt(tb, hops), after))
    return results


@dataclass(frozen=True)
class Part:
    """One part's outcome for the summary: verdict, key number, where to look."""

    name: str
    ok: bool
    key: str
    files: tuple[str, ...] = ()


def delay_part(results: list[Measurement], tolerance_ms: float, backend: str) -> Part:
    shown = results[:1] + results[1:][-1:]          # the first ping and the one after link-set
    key = "; ".join(f"{m.label}: median RTT {m.median_ms:.2f} ms vs configured {m.configured_ms:.1f} ms"
                    for m in shown) or "no measurement"
    return Part("delay", bool(results) and all(m.ok(tolerance_ms) for m in results),
                f"{key} (tolerance ±{tolerance_ms:g} ms, {backend} backend)")


def _missing(name: str, out: Path, status: int | None) -> Part:
    return Part(name, False, f"no results.json (exit status {status}); see {out / 'run.log'}")


def front_proxy_part(out: Path, status: int | None = 0) -> Part:
    """From experiments/front_proxy.py's results.json (testbed.run.results.write_results:
    ``verdicts`` named after the tutorial's steps, ``valid``, ``failed``)."""
    if not (out / "results.json").exists():
        return _missing("front_proxy", out, status)
    from testbed.run.results import read_results  # late: keeps `minimesh` start-up and --help light
    doc = read_results(out)
    verdicts = doc.get("verdicts", {})
    host = next((v for name, v in verdicts.items() if name.startswith("upstream saw Host:")), None)
    curl_ok = any(v.get("valid") and name.startswith("curl succeeds") for name, v in verdicts.items())
    key = "curl via the proxy got 200; " if curl_ok else "curl via the proxy FAILED; "
    key += f"upstream saw Host: {host.get('detail')}" if host else "upstream Host not checked"
    rise = next((v.get("numbers", {}).get("rise_ms") for name, v in verdicts.items()
                 if name.startswith("latency rose")), None)
    if rise is not None:
        key += f"; web's link +{doc.get('params', {}).get('delay_ms', 0):g} ms one-way: p50 +{rise:g} ms"
    if doc.get("failed"):
        key += "; failed: " + ", ".join(map(str, doc["failed"]))
    files = sorted(out.glob("*.png")) + sorted((out / "pcap").glob("*.pcapng"))
    return Part("front_proxy", bool(doc.get("valid")) and status == 0, key, tuple(str(p) for p in files))


def canary_part(out: Path, status: int | None = 0) -> Part:
    """From the canary experiment's results.json (testbed.run.results.write_results)."""
    path = out / "results.json"
    if not path.exists():
        return _missing("canary", out, status)
    doc = json.loads(path.read_text())
    m, weight = doc.get("metrics", {}), doc.get("params", {}).get("weights", {}).get("v2")
    if "v2_share" in m and m.get("v2_ci"):
        lo, hi = m["v2_ci"]
        key = (f"v2 served {m['v2_share']:.2%} of {m.get('requests')} requests, 99.9 % CI [{lo:.2%}, {hi:.2%}]"
               + (f", configured {weight} %" if weight is not None else ""))
    else:
        key = "no split measured"
    if doc.get("failed"):
        key += "; failed: " + ", ".join(map(str, doc["failed"]))
    files = sorted((out).glob("*.png")) + sorted((out / "pcap").glob("*.pcapng"))
    return Part("canary", bool(doc.get("valid")) and status == 0, key, tuple(str(p) for p in files))


def format_summary(parts: list[Part], out: Path, report: Path | None = None) -> str:
    """The text printed at the end of ``minimesh demo``; ``report`` (the demo's report.html,
    linking each part's) first."""
    lines = ["", "=== minimesh demo: summary"]
    if report is not None:
        lines.append(f"Report:  {report}  (open it in a browser: each part's report.html, no network needed)")
    for p in parts:
        lines.append(f"  [{'ok' if p.ok else 'FAIL'}] {p.name}: {p.key}")
    lines.append(f"\nResults: {out}  (each part's results.json, logs, plots and pcap/ under {out}/<part>/)")
    plots = [f for p in parts for f in p.files if f.endswith(".png")]
    if plots:
        lines.append("Plots:   " + "  ".join(plots))
    for p in parts:
        pcaps = [f for f in p.files if f.endswith(".pcapng")]
        if pcaps:
            lines.append(f"Captures ({p.name}): {Path(pcaps[0]).parent}/*.pcapng  ({len(pcaps)} files, "
                         "one per host interface; names embedded, also in hosts)")
    opens = [(f, flt, hint) for p in parts for f in p.files for name, (main, flt, hint) in OPEN_WITH.items()
             if p.name == name and Path(f).name == main]
    if opens:
        lines.append("Open them:")
    for f, flt, hint in opens:
        lines.append(f"  tshark -r {shlex.quote(f)} -N n {flt}")
        lines.append(f"  wireshark -r {shlex.quote(f)}  ({hint})")
    ok = bool(parts) and all(p.ok for p in parts)
    lines.append(f"\n{'PASS' if ok else 'FAIL'}: {sum(p.ok for p in parts)}/{len(parts)} parts passed")
    return "\n".join(lines)


def _print(results: list[Measurement], tolerance_ms: float, backend: str) -> None:
    from rich.console import Console  # late: keeps `minimesh` start-up and --help light
    from rich.table import Table
    table = Table(title=f"minimesh demo: ping RTT, configured vs measured (link backend: {backend})")
    for col in ("measurement", "configured ms", "measured median ms", "samples", "within ±%g ms" % tolerance_ms):
        table.add_column(col)
    for m in results:
        table.add_row(m.label, f"{m.configured_ms:.1f}", f"{m.median_ms:.2f}", str(len(m.samples)),
                      "[green]yes[/]" if m.ok(tolerance_ms) else "[red]NO[/]")
    Console().print(table)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="results directory (default ./results/demo-<timestamp>)")
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--topology", default=str(DEFAULT_TOPOLOGY),
                   help="topology of the delay part (default: topologies/line3.yaml)")
    p.add_argument("--link-backend", choices=BACKENDS, default="auto")
    p.add_argument("--tolerance-ms", type=float, default=2.0)
    p.add_argument("--new-delay-ms", type=float, default=40.0,
                   help="one-way delay set live on the first hop")


def _run_delay(args: argparse.Namespace, topology: Any, fallback: bool, out: Path) -> Part:
    parts: list[Part] = []

    def demo(tb: RunningTestbed) -> int:
        if fallback:
            print("*** topologies/line3.yaml not found: stock single,3 with h1-s1 shaped to 10ms",
                  file=sys.stderr)
            tb.set_link("h1", "s1", delay="10ms")
        results = run_demo(tb, args.tolerance_ms, args.new_delay_ms)
        _print(results, args.tolerance_ms, tb.backend.name)
        part = delay_part(results, args.tolerance_ms, tb.backend.name)
        parts.append(part)
        from testbed.run.results import write_results  # late: keeps `minimesh` start-up and --help light
        write_results(out, "demo-delay", None, {"topology": str(args.topology), "tolerance_ms": args.tolerance_ms,
                                                 "new_delay_ms": args.new_delay_ms, "backend": tb.backend.name},
                      {m.label: {"configured_ms": m.configured_ms, "median_ms": m.median_ms,
                                 "samples": len(m.samples)} for m in results},
                      {"delay": {"valid": part.ok, "detail": part.key}})
        from testbed.ui.page.report import write_report     # late: as above
        write_report(out, tb.topology, title="demo: delay")
        return EXIT_OK if part.ok else EXIT_FAIL
    status = run_testbed("demo", topology, args.link_backend, demo)
    if status >= 128:                  # Ctrl-C or SIGTERM: torn down; stop the whole demo
        raise KeyboardInterrupt
    return parts[0] if parts and status == EXIT_OK else (
        Part("delay", False, f"{parts[0].key if parts else 'did not run'} (exit status {status})"))


def _run_experiment(name: str, args: argparse.Namespace, out: Path) -> Part:
    """``experiments/<name>.py --quick --out <out>`` (capture on: <out>/pcap), its output
    shown and kept in <out>/run.log."""
    user_dir(out)
    argv = [sys.executable, str(REPO / "experiments" / f"{name}.py"), "--quick", "--out", str(out),
            "--link-backend", args.link_backend]
    print(f"\n*** {name}: {' '.join(shlex.quote(a) for a in argv)}", file=sys.stderr, flush=True)
    status: int | None = None
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(PART_TIMEOUT_S, proc.terminate)   # SIGTERM: it tears down
        timer.start()
        try:
            with teardown_signals(sigint=False):   # SIGTERM/SIGHUP to the demo: passed on below
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    log.write(line)
                status = proc.wait(30)
        except Terminated:
            proc.terminate()
            raise KeyboardInterrupt from None
        finally:
            timer.cancel()
            if proc.poll() is None:      # Ctrl-C: the child got SIGINT too; let it tear down
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return (front_proxy_part if name == "front_proxy" else canary_part)(out, status)


def _write_index(out: Path, parts: list[Part]) -> Path | None:
    """The demo's report.html: each part's verdict, linking the part's own report.html."""
    from testbed.ui.page.report import write_index     # late: keeps `minimesh` start-up and --help light
    try:
        return write_index(out, "minimesh demo", [(p.name, p.ok, p.key) for p in parts])
    except OSError as e:
        print(f"*** report.html not written: {e}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    parts_wanted = [p for p in PARTS if p in (args.only or PARTS)]
    fallback = not Path(args.topology).exists() and args.topology == str(DEFAULT_TOPOLOGY)
    topology = load_topology_or_exit("single,3" if fallback else args.topology) if "delay" in parts_wanted else None
    require_root("demo")
    from mininet.log import setLogLevel     # late: Mininet (--help and the unit tests do without it)
    setLogLevel("output")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = user_dir((args.out or Path("results") / f"demo-{stamp}").resolve())
    started = time.monotonic()
    parts: list[Part] = []
    try:
        for name in parts_wanted:
            print(f"\n=== minimesh demo, part {len(parts) + 1}/{len(parts_wanted)}: {name}", flush=True)
            parts.append(_run_delay(args, topology, fallback, out / "delay") if name == "delay"
                         else _run_experiment(name, args, out / name))
    except KeyboardInterrupt:
        print("\n*** interrupted", file=sys.stderr)
        print(format_summary(parts, out, _write_index(out, parts)))
        return 130
    index = _write_index(out, parts)
    hand_over_tree(out)
    print(format_summary(parts, out, index))
    print(f"(demo took {time.monotonic() - started:.0f} s)")
    return EXIT_OK if all(p.ok for p in parts) else EXIT_FAIL


SUBCOMMANDS = [Subcommand("demo", "the main job: configured vs measured delay, the tutorial's front proxy "
                          "and a canary split, with results, plots and pcapng captures", _configure, _run)]
