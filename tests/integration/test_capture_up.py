"""`minimesh up TOPOLOGY --capture DIR`: tcpdump per host interface for the
session's lifetime, stopped at teardown so the files are complete pcapng, names written.
Root only; userspace link backend; nothing may be left running."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from test_net_support import (HA, HB, HC, assert_nothing_left, interactive_up, run_minimesh, snapshot, terminate,
                              type_until, write_topology)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def tshark(path, *args: str) -> str:
    return subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_up_capture_records_the_session(tmp_path):
    topo = write_topology(tmp_path)
    cap = tmp_path / "pcap"
    before = snapshot()
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", "--capture", str(cap),
                                input=f"{HA} ping -c 3 {HB}\n")
    assert rc == 0, err
    assert "3 packets transmitted, 3 received" in out
    files = {p.name for p in cap.glob("*.pcapng")}
    assert files == {f"{h}-eth0.pcapng" for h in (HA, HB, HC)}, files
    for name in files:
        assert (cap / name).read_bytes()[:4] == b"\x0a\x0d\x0d\x0a", f"{name} is not pcapng"
    # both ends saw the 3 echo requests and 3 replies; the quiet host saw no echo of them
    for h in (HA, HB):
        icmp = tshark(cap / f"{h}-eth0.pcapng", "-Y", "icmp.type == 8 || icmp.type == 0",
                      "-T", "fields", "-e", "icmp.type").split()
        assert icmp.count("8") == 3 and icmp.count("0") == 3, (h, icmp)
    hosts = (cap / "hosts").read_text()
    assert f"10.0.0.1 {HA}" in hosts and f"10.0.0.2 {HB}" in hosts
    named = tshark(cap / f"{HA}-eth0.pcapng", "-N", "n", "-Y", "icmp.type == 8", "-T", "fields", "-e", "ip.dst_host")
    assert named.split()[:1] == [HB], "the embedded name block names the peer"
    assert not list(tmp_path.glob("*.jsonl")), "journal emptied at teardown"
    assert_nothing_left(before)



def test_up_capture_gets_the_cli_faults_as_comments(tmp_path):
    """--capture without --out: the history goes next to the captures (DIR/history.jsonl),
    and at exit every capture carries the session's fault ops — the heal at exit included —
    as packet comments (tshark -Y frame.comment), in time order, with the name block kept."""
    from testbed.history import read_history
    topo = write_topology(tmp_path)
    cap = tmp_path / "pcap"
    before = snapshot()
    script = "\n".join([f"{HA} ping -c 2 -i 0.2 {HB}", f"partition {HA} {HB}", f"{HA} ping -c 1 -W 1 {HB}",
                        "heal", f"{HA} ping -c 2 -i 0.2 {HB}", f"drop {HA} {HB} oneway",
                        f"{HA} ping -c 1 -W 1 {HB}"]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", "--capture", str(cap),
                                input=script)
    assert rc == 0, err
    data = read_history(cap / "history.jsonl")
    assert [(r.fault_id, r.phase) for r in data.faults] == [(0, "apply"), (0, "revert"), (1, "apply"), (1, "revert")]
    assert {p.name for p in cap.glob("*.pcapng")} == {f"{h}-eth0.pcapng" for h in (HA, HB, HC)}
    comments = tshark(cap / f"{HA}-eth0.pcapng", "-Y", "frame.comment", "-T", "fields", "-e", "frame.comment")
    found = [c for c in comments.replace("|", "\n").replace(",", "\n").splitlines() if "minimesh fault" in c]
    assert [c.split(" at ")[0].strip() for c in found] == [
        "minimesh fault #0 apply", "minimesh fault #0 revert",
        "minimesh fault #1 apply", "minimesh fault #1 revert"], comments
    assert f"partition ({HA} drops {HB}; {HB} drops {HA})" in found[0] and f"cut {HA}->{HB}" in found[3]
    named = tshark(cap / f"{HA}-eth0.pcapng", "-N", "n", "-Y", "icmp.type == 8", "-T", "fields", "-e", "ip.dst_host")
    assert named.split()[:1] == [HB], "the name block is written after the comments"
    assert "fault comments in 3 files" in err
    rc, _, err = run_minimesh(tmp_path, "up", str(topo), "--capture", str(cap))
    assert rc == 2 and f"--capture {cap}: " in err and "next to the captures" in err, err
    assert_nothing_left(before)


def test_up_capture_files_complete_after_sigterm(tmp_path):
    """SIGTERM mid-session: teardown still stops tcpdump first, so the pings already
    answered are in complete pcapng files, and nothing is left running."""
    topo = write_topology(tmp_path)
    cap = tmp_path / "pcap"
    before = snapshot()
    proc = interactive_up(tmp_path, str(topo), "--link-backend", "userspace", "--capture", str(cap))
    try:
        type_until(proc, f"{HA} ping -c 4 -i 0.2 {HB}\nlink-show\n", "4 received")
    finally:
        _, err = terminate(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    echo = tshark(cap / f"{HB}-eth0.pcapng", "-Y", "icmp.type == 8", "-T", "fields", "-e", "ip.src").split()
    assert echo.count("10.0.0.1") == 4, echo
    assert (cap / "hosts").exists()
    assert_nothing_left(before)


@pytest.mark.slow
def test_front_proxy_capture_shows_dns_and_rewritten_request(tmp_path):
    """experiments/front_proxy.py --quick --out DIR captures into DIR/pcap: h1's file (the
    proxy's host) holds the DNS query for the site, the client's request to the proxy and
    the proxy's request upstream with Host: gwadvnet20.github.io; names embedded."""
    import sys

    from tests.support.procs import REPO
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "experiments/front_proxy.py", "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    h1 = out / "pcap" / "h1-eth0.pcapng"
    assert {p.name for p in (out / "pcap").glob("*.pcapng")} == {f"{h}-eth0.pcapng" for h in ("h1", "h2", "web", "dns")}
    queries = tshark(h1, "-Y", "dns.flags.response == 0", "-T", "fields", "-e", "ip.src",
                     "-e", "dns.qry.name").splitlines()
    assert "10.0.0.1\tgwadvnet20.github.io" in queries, queries
    hosts = tshark(h1, "-d", "tcp.port==15001,http", "-Y", "http.request", "-T", "fields",
                   "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "http.host").splitlines()
    web = tshark(h1, "-Y", "http.request", "-T", "fields", "-e", "ip.dst").split()[-1]
    assert any(h.startswith("10.0.0.2\t10.0.0.1\t15001\tgoogle.com") for h in hosts), hosts   # client -> proxy
    assert f"10.0.0.1\t{web}\t80\tgwadvnet20.github.io" in hosts, hosts                        # proxy -> web
    named = tshark(h1, "-N", "n", "-Y", "http.request && tcp.dstport == 80", "-T", "fields", "-e", "ip.dst_host")
    assert named.split()[0] == "gwadvnet20.github.io", "the name block names the stand-in"
    assert json.loads((out / "results.json").read_text())["valid"] is True
