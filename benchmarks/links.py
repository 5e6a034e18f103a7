"""Link-backend benchmark (not a test; run as root): ``sudo python benchmarks/links.py``.

Builds h1 - s1 - h2 on Mininet (LinuxBridge) per backend and prints one table:
TCP Gbit/s (iperf3) and small-packet UDP pps at delay 0 and 10 ms, one-way delay error
percentiles at 1/10/100 ms (ping; error = RTT - configured - RTT of plain veths), and CPU
per Gbit/s. The userspace backend always; kernel netem side by side where it exists.
For UDP it also says where datagrams were lost (link interfaces, i.e. a full TAP ring,
vs h2's socket) and the emulators' CPU per forwarded frame. ``--udp-only``: just the UDP
rows (a short run to repeat); ``--model``: the link model's Python cost per frame.

``--fidelity``: the side-by-side of the link model's fidelity, per backend on the same
h1 - s1 - h2 and workloads: delay error p50/p99, the jitter distribution (deciles against
the uniform delay +- jitter), loss against its binomial interval, rate accuracy, reordering
under jitter. ``--guest`` runs ``--fidelity`` inside a user-mode-linux guest
(tests/support/uml.py), where the kernel has netem (the reference), and prints it next to
the userspace backend measured here on the host: UML's own overhead is the difference
between the two userspace columns.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)

from mininet.link import Link  # noqa: E402  (sys.path set above)
from mininet.log import setLogLevel  # noqa: E402  (sys.path set above)
from mininet.net import Mininet  # noqa: E402  (sys.path set above)
from mininet.nodelib import LinuxBridge  # noqa: E402  (sys.path set above)
from mininet.topo import Topo  # noqa: E402  (sys.path set above)

from testbed.journal import Journal  # noqa: E402  (sys.path set above)
from testbed.links import probe_netem, select_backend  # noqa: E402  (sys.path set above)
from testbed.links.measure import percentile  # noqa: E402  (sys.path set above)
from testbed.shape import LinkShape  # noqa: E402  (sys.path set above)

SWITCH = f"mmb{os.getpid() % 10000}"
TICKS = os.sysconf("SC_CLK_TCK")
UDP_OFFERED_PPS = (60_000, 100_000, 150_000)
UDP_SOCKET_BUFFER = "4M"  # iperf3 -w; the kernel caps it at net.core.[rw]mem_max


class Line(Topo):
    """h1 - s1 - h2; ``shapes`` (h1 -> s1, s1 -> h1) on the first link, none on the second."""

    def build(self, shapes: tuple[LinkShape, LinkShape] | None = None, plain: bool = False):
        s1 = self.addSwitch(SWITCH)
        shapes = shapes or (LinkShape(), LinkShape())
        for i, name in enumerate(("h1", "h2")):
            fwd, bwd = shapes if i == 0 else (LinkShape(), LinkShape())
            self.addLink(self.addHost(name), s1, **({} if plain else {"shape1": fwd, "shape2": bwd}))


@contextmanager
def line(backend: str | None, shapes: tuple[LinkShape, LinkShape] | None,
         journal: Journal) -> Iterator[Mininet]:
    link = Link if backend is None else select_backend(backend, journal).link_class
    net = Mininet(topo=Line(shapes=shapes, plain=backend is None), link=link, switch=LinuxBridge,
                  controller=None, autoSetMacs=True)
    try:
        net.start()
        h1, h2 = net.get("h1", "h2")
        h1.cmd("ping -c 2 -i 0.2 -W 2", h2.IP())
        yield net
    finally:
        net.stop()


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


def _system_busy() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def _cpu_ns(pids: list[int]) -> int:
    """CPU time (ns, from the scheduler: finer than ticks) of the emulator processes."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except OSError:
            pass
    return total


def _drops(net: Mininet) -> dict[str, int]:
    """Frames the link interfaces dropped on transmit (for a TAP: its ring was full, the
    emulator did not read in time) and UDP datagrams h2's sockets had no buffer for."""
    h1, h2 = net.get("h1", "h2")
    ring = 0
    for text in (h1.cmd("cat /proc/net/dev"), h2.cmd("cat /proc/net/dev"),
                 Path("/proc/net/dev").read_text()):
        for row in text.splitlines()[2:]:
            name, _, counters = row.partition(":")
            if name.strip().startswith(("h1-", "h2-", SWITCH + "-")):
                ring += int(counters.split()[11])  # tx drop
    udp = [row.split() for row in h2.cmd("cat /proc/net/snmp").splitlines() if row.startswith("Udp:")]
    return {"ring": ring, "rcvbuf": int(dict(zip(udp[0], udp[1], strict=True))["RcvbufErrors"])}


def _frames(net: Mininet) -> int:
    return sum(sum(d["sent"] for d in lk.stats()["stats"]) for lk in net.links if hasattr(lk, "stats"))


def iperf(net: Mininet, udp: bool, seconds: float, udp_rate: str = "0") -> dict[str, Any]:
    h1, h2 = net.get("h1", "h2")
    pids = [lk.emulator_pid for lk in net.links if getattr(lk, "emulator_pid", None)]
    server = h2.popen(["iperf3", "-s", "-1", "-p", "5202"])
    try:
        time.sleep(0.3)
        # -w: socket buffers big enough that h2's receiver, not only the link, keeps up
        args = f"-u -l 64 -b {udp_rate} -w {UDP_SOCKET_BUFFER}" if udp else ""
        d0, f0, n0 = _drops(net), _frames(net), _cpu_ns(pids)
        c0, (b0, t0), w0 = _cpu_ticks(pids), _system_busy(), time.monotonic()
        out = h1.cmd(f"iperf3 -c {h2.IP()} -p 5202 -t {seconds} -J {args}")
        c1, (b1, t1), w1 = _cpu_ticks(pids), _system_busy(), time.monotonic()
        d1, f1, n1 = _drops(net), _frames(net), _cpu_ns(pids)
    finally:
        server.kill()
        server.wait()
    res = json.loads(out[out.index("{"):])
    end = res["end"]
    ncpu = os.cpu_count() or 1
    r = {"emu_cores": (c1 - c0) / TICKS / (w1 - w0) if pids else None,
         "sys_cores": (b1 - b0) / max(t1 - t0, 1) * ncpu,
         "emu_us_per_frame": (n1 - n0) / 1e3 / (f1 - f0) if pids and f1 > f0 else None}
    if udp:
        s = end["sum"]
        r["pps"] = (s["packets"] - s["lost_packets"]) / s["seconds"]
        r["sent_pps"] = s["packets"] / s["seconds"]
        r["lost"] = tuple(x / s["seconds"] for x in (s["lost_packets"], d1["ring"] - d0["ring"],
                                                     d1["rcvbuf"] - d0["rcvbuf"]))
    else:
        r["gbit"] = end["sum_received"]["bits_per_second"] / 1e9
    return r


def rtts(net: Mininet, count: int, interval: float) -> list[float]:
    """RTTs (ms) of UDP echo probes h1 -> h2 (testbed.links.echo, ns timestamps)."""
    h1, h2 = net.get("h1", "h2")
    env = {**os.environ, "PYTHONPATH": REPO}
    server = h2.popen([sys.executable, "-m", "testbed.links.echo", "server", "7007"], env=env)
    try:
        time.sleep(0.3)
        out = h1.cmd(f"PYTHONPATH={REPO} {sys.executable} -m testbed.links.echo client "
                     f"{h2.IP()} 7007 {count} {interval}")
    finally:
        server.kill()
        server.wait()
    return json.loads(out[out.index("{"):])["rtt_ms"]


def bench(backend: str | None, journal: Journal, seconds: float, base_rtt: float,
          udp_only: bool = False) -> dict[str, Any]:
    """One column. backend None: Mininet's plain veth Link (no shaping possible), as the
    reference for what this machine's kernel path alone achieves."""
    row: dict[str, Any] = {}
    for d in ((0,) if backend is None else (0, 10)):
        shape = LinkShape(delay_ms=d, queue_pkts=10_000)
        with line(backend, (shape, shape), journal) as net:
            tcp = None if udp_only else iperf(net, False, seconds)
            # an unlimited sender mostly feeds drops at the first queue and starves the
            # emulator of CPU: offer fixed loads and keep the best delivered rate
            udp = max((iperf(net, True, min(seconds, 3.0), f"{pps * 64 * 8}")
                       for pps in UDP_OFFERED_PPS), key=lambda r: r["pps"])
        row[f"pps_{d}"] = udp["pps"]
        row[f"ppssent_{d}"] = udp["sent_pps"]
        row[f"lost_{d}"] = udp["lost"]
        row[f"usframe_{d}"] = udp["emu_us_per_frame"]
        if tcp is not None:
            row[f"tcp_{d}"] = tcp["gbit"]
        if tcp is not None and d == 0:
            row["emu_cpu_per_gbit"] = (tcp["emu_cores"] / tcp["gbit"]) if tcp["emu_cores"] else None
            row["sys_cpu_per_gbit"] = tcp["sys_cores"] / tcp["gbit"]
    if udp_only:
        return row
    if backend is None:
        row["rtt_0"] = base_rtt
        return row
    with line(backend, None, journal) as net:
        row["rtt_0"] = statistics.median(rtts(net, 200, 0.01))
    for d in (1, 10, 100):
        # delay on h1 -> s1 only: RTT = d + the path's own RTT
        with line(backend, (LinkShape(delay_ms=d), LinkShape()), journal) as net:
            errs = [r - d - base_rtt for r in rtts(net, 300 if d < 100 else 100, 0.01)]
        row[f"err_{d}"] = tuple(percentile(errs, p) for p in (50, 90, 99))
    return row


def _ping(net: Mininet, count: int, interval: float) -> list[Any]:
    from testbed.links.measure import parse_ping
    h1, h2 = net.get("h1", "h2")
    replies, tx, rx = parse_ping(h1.cmd(f"ping -n -c {count} -i {interval} -W 2 {h2.IP()}"))
    return [replies, tx, rx]


def fidelity(backend: str, journal: Journal, base: float) -> dict[str, Any]:
    """One column of the fidelity table (see the module's docstring); shapes on h1 -> s1."""
    from testbed.links.measure import binomial_bounds
    row: dict[str, Any] = {"base_rtt": base}
    with line(backend, (LinkShape(delay_ms=10), LinkShape()), journal) as net:
        errs = [r - 10 - base for r in rtts(net, 500, 0.01)]
    row["delay_err"] = (percentile(errs, 50), percentile(errs, 99))
    with line(backend, (LinkShape(delay_ms=20, jitter_ms=5), LinkShape()), journal) as net:
        got = [r - base for r in rtts(net, 1000, 0.005)]
    deciles = statistics.quantiles(got, n=10)
    row["jitter_deciles"] = deciles
    row["jitter_decile_err"] = max(abs(d - (16.0 + k)) for k, d in enumerate(deciles))
    row["jitter_range"] = (min(got), max(got))
    with line(backend, (LinkShape(loss_pct=10), LinkShape()), journal) as net:
        _, tx, rx = _ping(net, 2000, 0.002)
    row["loss"] = (tx - rx, tx, binomial_bounds(tx, 0.10))
    with line(backend, (LinkShape(bw_mbit=10), LinkShape()), journal) as net:
        row["rate_10"] = _tcp_mbit(net, 4)
    with line(backend, (LinkShape(delay_ms=10, jitter_ms=5), LinkShape()), journal) as net:
        replies, tx, _ = _ping(net, 1000, 0.002)
    row["reordered"] = _reordered([r.seq for r in replies]) / max(tx, 1)
    return row


def _tcp_mbit(net: Mininet, seconds: float) -> float:
    h1, h2 = net.get("h1", "h2")
    server = h2.popen(["iperf3", "-s", "-1", "-p", "5204"])
    try:
        time.sleep(0.3)
        out = h1.cmd(f"iperf3 -c {h2.IP()} -p 5204 -t {seconds} -O 1 -J")
    finally:
        server.kill()
        server.wait()
    return float(json.loads(out[out.index("{"):])["end"]["sum_received"]["bits_per_second"]) / 1e6


def _reordered(seqs: list[int]) -> int:
    """Replies that arrived after a later-sent one (ping's icmp_seq in arrival order)."""
    top, late = -1, 0
    for q in seqs:
        if q < top:
            late += 1
        top = max(top, q)
    return late


def run_fidelity(backends: list[str]) -> dict[str, Any]:
    """The fidelity columns of ``backends`` on this kernel, with the plain-veth baseline."""
    journal = Journal()
    try:
        with line(None, None, journal) as net:
            base = statistics.median(rtts(net, 300, 0.01))
        return {b: fidelity(b, journal, base) for b in backends}
    finally:
        journal.cleanup()


def guest_fidelity() -> tuple[dict[str, Any], Any]:
    """``--fidelity --json`` for both backends inside a UML guest; (columns, GuestResult)."""
    import tempfile

    from tests.support.uml import run_in_guest   # late: only the guest mode needs the rig
    with tempfile.TemporaryDirectory(prefix="mm-uml-") as outdir:
        res = run_in_guest([sys.executable, "benchmarks/links.py", "--fidelity", "--json",
                            "--backends", "userspace,netem"], timeout=900, outdir=Path(outdir))
    if res.returncode != 0:
        raise RuntimeError(f"the guest's benchmark failed (exit {res.returncode}):\n{res.output[-3000:]}")
    out = res.output
    return json.loads(out[out.index("{"):]), res


FIDELITY_ROWS = [
    ("base_rtt", "plain veth RTT (baseline), ms", lambda v: f"{v:.3f}"),
    ("delay_err", "delay error p50 / p99, ms (10 ms)", lambda v: f"{v[0]:+.3f} / {v[1]:+.3f}"),
    ("jitter_deciles", "RTT deciles, 20 +- 5 ms (ideal 16..24)",
     lambda v: " ".join(f"{x:.1f}" for x in v)),
    ("jitter_decile_err", "  largest decile error, ms", lambda v: f"{v:.2f}"),
    ("jitter_range", "  min / max RTT, ms", lambda v: f"{v[0]:.1f} / {v[1]:.1f}"),
    ("loss", "loss 10 %: lost / sent [99 % interval]",
     lambda v: f"{v[0]} / {v[1]} [{v[2][0]}, {v[2][1]}]" + ("" if v[2][0] <= v[0] <= v[2][1] else " OUT")),
    ("rate_10", "TCP through bw 10 Mbit/s, Mbit/s", lambda v: f"{v:.2f} ({(v / 10 - 1) * 100:+.1f} %)"),
    ("reordered", "replies reordered, 10 +- 5 ms, ping -i 0.002", lambda v: f"{v * 100:.1f} %"),
]


def print_fidelity(cols: list[tuple[str, dict[str, Any]]]) -> None:
    print("| metric | " + " | ".join(title for title, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for key, label, f in FIDELITY_ROWS:
        print(f"| {label} | " + " | ".join(f(c[key]) if key in c else "-" for _, c in cols) + " |")


def fidelity_main(args: argparse.Namespace) -> int:
    if args.guest:
        here = run_fidelity(["userspace"])["userspace"]
        cols, res = guest_fidelity()
        print(f"UML guest: boot {res.boot_s:.1f} s, whole run {res.run_s:.0f} s; "
              f"host load average {os.getloadavg()[0]:.2f}")
        print_fidelity([("userspace, host", here), ("userspace, UML guest", cols["userspace"]),
                        ("netem, UML guest", cols["netem"])])
        return 0
    cols = run_fidelity(args.backends.split(","))
    if args.json:
        print(json.dumps(cols))
    else:
        print_fidelity(list(cols.items()))
    return 0


def fmt(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return "absent"
    if key not in row:
        return "-"
    v = row.get(key)
    if v is None:
        return "n/a"
    if key.startswith("err_"):
        return "/".join(f"{x:+.3f}" for x in v)
    if key.startswith("pps"):
        return f"{v / 1000:.0f} k"
    if key.startswith("lost"):  # datagrams lost: all / at a TAP or veth / at h2's socket
        return "/".join(f"{x / 1000:.0f}k" for x in v)
    if key.startswith("rtt"):
        return f"{v:.3f} ms"
    return f"{v:.2f}"


def model_cost(frames: int = 200_000) -> None:
    """Python CPU per frame of the sans-IO model alone (no root, no I/O): enqueue at 100 k
    frames/s, release every 64 frames, as the emulator drives it. Best of three."""
    import random

    from testbed.links.model import DirectionModel
    for kw in ({}, {"delay_ms": 10}, {"delay_ms": 10, "loss_pct": 1}, {"delay_ms": 10, "jitter_ms": 1},
               {"delay_ms": 10, "bw_mbit": 100}):
        best = float("inf")
        for _ in range(3):
            m = DirectionModel(LinkShape(queue_pkts=100_000, **kw), random.Random(1))
            frame, now, t = bytes(94), 0.0, time.perf_counter()
            for _ in range(frames // 64):
                now += 64e-5
                for _ in range(64):
                    m.enqueue(frame, now)
                m.pop_due(now)
            best = min(best, (time.perf_counter() - t) / frames * 1e9)
        print(f"{LinkShape(**kw).describe() or 'no shaping':28} {best:6.0f} ns per frame")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run")
    ap.add_argument("--udp-only", action="store_true",
                    help="only the small-packet UDP rows (a short run to repeat)")
    ap.add_argument("--model", action="store_true",
                    help="only the link model's Python cost per frame (no root, no network)")
    ap.add_argument("--fidelity", action="store_true",
                    help="the fidelity table (delay, jitter, loss, rate, reordering) per backend")
    ap.add_argument("--backends", default="userspace,netem", help="with --fidelity: which")
    ap.add_argument("--json", action="store_true", help="with --fidelity: JSON out")
    ap.add_argument("--guest", action="store_true",
                    help="with --fidelity: netem and userspace in a UML guest, next to userspace here")
    args = ap.parse_args()
    if args.fidelity:
        if os.geteuid() != 0:
            print("benchmarks/links.py needs root (Mininet namespaces)", file=sys.stderr)
            return 2
        setLogLevel("error")
        return fidelity_main(args)
    if args.model:
        model_cost()
        return 0
    if os.geteuid() != 0:
        print("benchmarks/links.py needs root (Mininet namespaces)", file=sys.stderr)
        return 2
    setLogLevel("error")
    before = f"{os.getloadavg()[0]:.2f}"
    journal = Journal()
    try:
        with line(None, None, journal) as net:
            base = statistics.median(rtts(net, 200, 0.01))
        rows = {"userspace": bench("userspace", journal, args.seconds, base, args.udp_only)}
        ok, why = probe_netem(journal)
        rows["netem"] = bench("netem", journal, args.seconds, base, args.udp_only) if ok else None
        rows["veth"] = bench(None, journal, args.seconds, base, args.udp_only)
    finally:
        journal.cleanup()
    labels = [("tcp_0", "TCP Gbit/s, delay 0"), ("tcp_10", "TCP Gbit/s, delay 10 ms"),
              ("pps_0", "UDP 64 B delivered pps, delay 0"),
              ("pps_10", "UDP 64 B delivered pps, delay 10ms"),
              ("ppssent_0", "  sent pps (same run), delay 0"), ("ppssent_10", "  sent pps, delay 10ms"),
              ("lost_0", "  lost/s all/interfaces/socket, d 0"),
              ("lost_10", "  lost/s all/interfaces/socket, d 10"),
              ("usframe_0", "  emulator CPU us per frame, delay 0"),
              ("usframe_10", "  emulator CPU us per frame, d 10ms"),
              ("rtt_0", "RTT h1-h2, no shaping"),
              ("err_1", "delay error 1 ms p50/p90/p99"), ("err_10", "delay error 10 ms p50/p90/p99"),
              ("err_100", "delay error 100 ms p50/p90/p99"),
              ("emu_cpu_per_gbit", "emulator CPU cores per Gbit/s"),
              ("sys_cpu_per_gbit", "whole-system CPU cores per Gbit/s")]
    print(f"\nplain veth RTT h1-h2 (baseline for delay error): {base:.3f} ms; "
          f"{os.cpu_count()} CPUs; netem: {'present' if ok else 'absent (' + why + ')'}")
    cols = [("userspace", "userspace"), ("netem", "netem"), ("veth", "plain veth, no shaping")]
    print(f"| {'metric':36} | " + " | ".join(f"{title:>24}" for _, title in cols) + " |")
    print(f"|{'-' * 38}|" + "|".join("-" * 26 for _ in cols) + "|")
    for key, label in labels:
        if all(fmt(rows[c], key) in ("-", "absent") for c, _ in cols):
            continue  # not measured in this run (--udp-only)
        print(f"| {label:36} | " + " | ".join(f"{fmt(rows[c], key):>24}" for c, _ in cols) + " |")
    print(f"load average before/after: {before} / {os.getloadavg()[0]:.2f} "
          "(other work on the machine skews all numbers)")
    print("delay error = RTT - configured one-way delay - baseline, in ms (delay on h1->s1 only);"
          " queue 10000 packets for the throughput rows")
    print("UDP rows: the best of offered loads " + "/".join(f"{p // 1000}k" for p in UDP_OFFERED_PPS)
          + " pps; lost = iperf3's count, then drops on the link interfaces (a full TAP ring:"
          " the emulator read too late) and h2's UDP receive-buffer overflows, per second;"
          " emulator CPU per frame forwarded, both links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
