"""``minimesh demo``: the README's main job (for now): configured vs measured delay, live.

Builds ``topologies/line3.yaml`` (or, if the checkout has none, Mininet's stock
``single,3`` with h1-s1 shaped to 10 ms live), then

1. pings h1 -> h2 and compares the median RTT with the configured one (twice the sum of
   one-way delays along the path);
2. runs a continuous ping and, while it flows, changes the first link's delay with
   ``link-set``; the RTTs of packets sent after the change are compared with the new
   configuration.

Exit status 1 if a median differs from its configuration by more than ``--tolerance-ms``
(2 ms). ``--link-backend`` as for ``up``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.cli import (BACKENDS, EXIT_FAIL, EXIT_OK, Subcommand, load_topology_or_exit,
                         require_root, run_testbed)

__all__ = ["SUBCOMMANDS", "parse_ping", "path_between", "Measurement"]

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "line3.yaml"
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
    hops = []
    node = b
    while prev[node] is not None:
        hops.append((prev[node], node))  # type: ignore[arg-type]
        node = prev[node]  # type: ignore[assignment]
    return hops[::-1]


def configured_rtt(tb: Any, hops: list[tuple[str, str]]) -> float:
    total = 0.0
    for x, y in hops:
        there, back = tb.control.shapes(x, y)
        total += there.delay_ms + back.delay_ms
    return total


def start_ping(tb: Any, src: str, dst: str, count: int, interval: float) -> Any:
    return tb.popen(src, ["ping", "-D", "-n", "-c", str(count), "-i", str(interval), "-W", "2", tb.ip(dst)],
                    text=True)


def finish_ping(proc: Any, count: int, interval: float) -> list[tuple[float, int, float]]:
    out, _ = proc.communicate(timeout=count * interval + 10)
    return parse_ping(out)


def ping(tb: Any, src: str, dst: str, count: int, interval: float) -> list[tuple[float, int, float]]:
    return finish_ping(start_ping(tb, src, dst, count, interval), count, interval)


def run_demo(tb: Any, tolerance_ms: float, new_delay_ms: float) -> list[Measurement]:
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


def _print(results: list[Measurement], tolerance_ms: float, backend: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"minimesh demo: ping RTT, configured vs measured (link backend: {backend})")
    for col in ("measurement", "configured ms", "measured median ms", "samples", "within ±%g ms" % tolerance_ms):
        table.add_column(col)
    for m in results:
        table.add_row(m.label, f"{m.configured_ms:.1f}", f"{m.median_ms:.2f}", str(len(m.samples)),
                      "[green]yes[/]" if m.ok(tolerance_ms) else "[red]NO[/]")
    Console().print(table)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default=str(DEFAULT_TOPOLOGY),
                   help="topology to demonstrate on (default: topologies/line3.yaml)")
    p.add_argument("--link-backend", choices=BACKENDS, default="auto")
    p.add_argument("--tolerance-ms", type=float, default=2.0)
    p.add_argument("--new-delay-ms", type=float, default=40.0,
                   help="one-way delay set live on the first hop")


def _run(args: argparse.Namespace) -> int:
    fallback = not Path(args.topology).exists() and args.topology == str(DEFAULT_TOPOLOGY)
    topology = load_topology_or_exit("single,3" if fallback else args.topology)
    require_root("demo")
    from mininet.log import setLogLevel
    setLogLevel("output")

    def demo(tb: Any) -> int:
        if fallback:
            print("*** topologies/line3.yaml not found: stock single,3 with h1-s1 shaped to 10ms",
                  file=sys.stderr)
            tb.set_link("h1", "s1", delay="10ms")
        results = run_demo(tb, args.tolerance_ms, args.new_delay_ms)
        _print(results, args.tolerance_ms, tb.backend.name)
        return EXIT_OK if all(m.ok(args.tolerance_ms) for m in results) else EXIT_FAIL
    return run_testbed("demo", topology, args.link_backend, demo)


SUBCOMMANDS = [Subcommand("demo", "build topologies/line3.yaml and show configured vs measured delay, "
                          "live", _configure, _run)]
