"""A running `minimesh up` driven from another process, as a student with a second terminal
does: `minimesh ps`, `minimesh link-set/drop/restore/heal/... [--run ID]`, `minimesh exec
NODE CMD`, and istioctl's `proxy-status`, `proxy-config`, `describe` against a mesh whose
sidecars are minimesh-proxy and real Envoy. The remote actions land in the same history
(and as comments in the captures) as typed ones; files are handed to SUDO_UID; the control
socket is root-only and gone at exit. Root only, userspace link backend; nothing left behind."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_net_support import HA, HB, REPO, SW, TAG, assert_nothing_left, snapshot, terminate, write_topology

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NOBODY = 65534


def start_up(state: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`minimesh up ARGS` with its stdin held open (EOF ends it); stdout and stderr go to
    files (a pipe nobody reads would fill up and block the shell)."""
    e = dict(os.environ, MINIMESH_STATE_DIR=str(state), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "testbed", "up", *args], cwd=REPO, env=e, text=True,
                            stdin=subprocess.PIPE, stdout=open(state / "up.out", "w"),
                            stderr=open(state / "up.err", "w"))


def mm(state: Path, *args: str, timeout: float = 60, input: str | None = None,
       cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`minimesh ARGS` from "another terminal" (another process, same state dir)."""
    env = dict(os.environ, MINIMESH_STATE_DIR=str(state), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, input=input)


def wait_published(state: Path, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list((state / "up").glob("*.json")) if (state / "up").is_dir() else []
        if files:
            return json.loads(files[0].read_text())
        assert proc.poll() is None, f"up ended: {(state / 'up.err').read_text()}"
        time.sleep(0.2)
    raise AssertionError("the control socket was not published")


def finish(state: Path, proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    """EOF on the shell's stdin: up heals, tears down and exits."""
    try:
        proc.stdin.close()
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            terminate(proc)
    return proc.returncode, (state / "up.out").read_text(), (state / "up.err").read_text()


def test_faults_exec_ps_from_another_terminal(tmp_path):
    topo = write_topology(tmp_path)
    out_dir, cap = tmp_path / "out", tmp_path / "pcap"
    before = snapshot()
    # as if `sudo minimesh up` by the user 'nobody': what it writes must become nobody's
    proc = start_up(tmp_path, str(topo), "--link-backend", "userspace", "--out", str(out_dir), "--capture", str(cap),
                    env=dict(SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY)))
    try:
        info = wait_published(tmp_path, proc)
        sock = Path(info["socket"])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        ps = mm(tmp_path, "ps", "-o", "json")
        assert ps.returncode == 0, ps.stderr
        (run,) = json.loads(ps.stdout)
        assert run["id"] == proc.pid and set(run["hosts"]) >= {HA, HB} and run["capture"] == str(cap)
        assert str(proc.pid) in mm(tmp_path, "ps").stdout

        r = mm(tmp_path, "link-set", HA, SW, "delay=40ms", "--run", str(proc.pid))
        assert r.returncode == 0 and "#0: link" in r.stdout, r.stderr
        shown = json.loads(mm(tmp_path, "link-show", "-o", "json").stdout)
        link = next(lk for lk in shown["links"] if {lk["a"], lk["b"]} == {HA, SW})
        assert link["forward"]["delay_ms"] == 40 and link["backward"]["delay_ms"] == 40
        ping = mm(tmp_path, "exec", HA, "ping", "-c", "3", "-i", "0.2", HB)
        assert ping.returncode == 0, ping.stderr
        rtts = [float(x.split("time=")[1].split()[0]) for x in ping.stdout.splitlines() if "time=" in x]
        assert len(rtts) == 3 and min(rtts) >= 78, rtts         # 2 x 40 ms (the emulator's timer granularity)
        r = mm(tmp_path, "drop", HA, HB)
        assert r.returncode == 0 and "#1: partition" in r.stdout, r.stderr
        assert mm(tmp_path, "exec", HA, "ping", "-c", "1", "-W", "1", HB).returncode == 1
        assert "healed #1: partition" in mm(tmp_path, "restore").stdout
        assert mm(tmp_path, "exec", HA, "ping", "-c", "1", "-W", "2", HB).returncode == 0
        hosts = mm(tmp_path, "exec", HA, "cat", "/etc/hosts").stdout      # the host's own mount namespace
        assert f"10.0.0.1\t{HA}" in hosts                  # not the root namespace's /etc/hosts
        assert mm(tmp_path, "exec", HB, "cat", input="through stdin\n").stdout == "through stdin\n"
        if shutil.which("script"):                         # a terminal passes through: an interactive shell
            env = dict(os.environ, MINIMESH_STATE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
            tty = subprocess.run(["script", "-qec", f"{sys.executable} -m testbed exec {HA} sh -c 'tty; hostname -I'",
                                  "/dev/null"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
            assert "/dev/pts/" in tty.stdout and "10.0.0.1" in tty.stdout, tty
        # errors: nothing changes
        bad = [mm(tmp_path, "exec", "nohost", "true"), mm(tmp_path, "heal", "--run", "1"),
               mm(tmp_path, "link-set", HA, "nohost", "delay=1ms"), mm(tmp_path, "crash", "pilot")]
        assert bad[0].returncode == 1 and "has no host 'nohost'; hosts: " in bad[0].stderr
        assert bad[1].returncode == 1 and f"no running testbed with ID 1; running: {proc.pid}" in bad[1].stderr
        assert bad[2].returncode == 1 and "nohost" in bad[2].stderr
        assert bad[3].returncode == 1 and "no processes are known without a mesh" in bad[3].stderr
        faults = mm(tmp_path, "faults").stdout
        assert faults.startswith("#0: link") and "#1" not in faults and "#2" not in faults
        heal = mm(tmp_path, "heal")
        assert heal.returncode == 0 and "healed #0: link" in heal.stdout
    finally:
        rc, out, err = finish(tmp_path, proc)
    assert rc == 0, err                               # remote failures are the caller's, not the session's
    assert "# from pid" in out                        # the up terminal saw the remote commands
    assert not sock.exists() and not (tmp_path / "up" / f"{proc.pid}.json").exists()
    from testbed.history import read_history
    recs = read_history(out_dir / "history.jsonl").faults
    assert [(r.fault_id, r.phase) for r in recs] == [(0, "apply"), (1, "apply"), (1, "revert"), (0, "revert")]
    assert recs[0].description.startswith(f"link {HA}-{SW} delay=40ms")
    comments = subprocess.run(["tshark", "-r", str(cap / f"{HA}-eth0.pcapng"), "-Y", "frame.comment", "-T", "fields",
                               "-e", "frame.comment"], capture_output=True, text=True, check=True).stdout
    assert f"link {HA}-{SW} delay=40ms" in comments and "partition" in comments
    for p in [out_dir / "history.jsonl", cap / f"{HA}-eth0.pcapng", cap / "hosts", cap, out_dir]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), p
        assert st.st_mode & 0o004, f"{p} not world-readable"
    assert mm(tmp_path, "heal").returncode == 1       # no run any more: a clear error
    assert_nothing_left(before)


RULES = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route: [{destination: {host: echo, subset: v1}}]
    timeout: 3s
"""


def mesh_topology(p: str) -> str:
    hosts = ["c", "h1", "h2", "e1", "cp"]
    return "\n".join([f"name: remote{TAG}", "hosts:", *[f"  {p}{h}: {{}}" for h in hosts],
                      "switches:", f"  {p}s: {{}}", "links:",
                      *[f"  - {{between: [{p}{h}, {p}s]}}" for h in hosts]]) + f"""
mesh:
  registry: {{members: [{p}e1], heartbeat_ms: 100, election_ms: 1000, ttl_s: 3}}
  control_plane: {{host: {p}cp}}
  security: {{}}
  clients: [{p}c]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{hosts: [{p}h1]}}}}}}
    env: {{port: 9000, run: "builtin:echo", sidecar: envoy, versions: {{v1: {{hosts: [{p}h2]}}}}}}
"""


def until(fn, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.5)


def rows(text: str) -> list[list[str]]:
    """A table's rows split on runs of two or more spaces (cells may hold one)."""
    import re
    return [re.split(r"\s{2,}", ln.strip()) for ln in text.splitlines() if ln.strip()]


def check_proxy_config(state: Path, name: str, svc: str, port: int) -> None:
    clusters = mm(state, "proxy-config", "clusters", name)
    assert clusters.returncode == 0, clusters.stderr
    table = rows(clusters.stdout)
    assert table[0] == ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "TLS"]
    assert ["echo", "8080", "-", "outbound", "EDS", "mTLS"] in table, clusters.stdout
    assert ["echo", "8080", "v1", "outbound", "EDS", "mTLS"] in table, clusters.stdout
    listeners = rows(mm(state, "proxy-config", "listeners", name).stdout)
    assert any(r[0] == "virtualOutbound" and r[-1] == "Route: 15001" for r in listeners), listeners
    assert any(r[0] == f"inbound_{port}" and r[2] == str(port) for r in listeners), listeners
    routes = rows(mm(state, "proxy-config", "routes", name).stdout)
    assert any(r[1] == "echo:8080" and r[-1].startswith("echo") for r in routes), routes
    eps = rows(mm(state, "proxy-config", "endpoints", name).stdout)
    assert eps[0] == ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]
    assert any(r[1:] == ["HEALTHY", "OK", "outbound|8080|v1|echo"] for r in eps), eps
    secret = rows(mm(state, "proxy-config", "secret", name).stdout)
    # (Envoy lists a secret per SDS subscription: the same rows, maybe a second serial mid-rotation)
    assert {tuple(r[:4]) for r in secret[1:]} == {("default", "Cert Chain", "ACTIVE", "true"),
                                                  ("ROOTCA", "CA", "ACTIVE", "true")}, secret
    raw = json.loads(mm(state, "proxy-config", "clusters", name, "-o", "json").stdout)
    assert raw["@type"].endswith("ClustersConfigDump")
    assert any(c["cluster"]["name"] == f"outbound|8080|v1|{svc}" for c in raw["dynamic_active_clusters"])


def test_inspection_of_minimesh_and_envoy_sidecars(tmp_path, envoy_bin):
    p = f"rm{TAG}"
    topo = tmp_path / f"{p}.yaml"
    topo.write_text(mesh_topology(p))
    rules = tmp_path / "echo-v1.yaml"
    rules.write_text(RULES)
    before = snapshot()
    proc = start_up(tmp_path, str(topo), "--link-backend", "userspace", "--out", str(tmp_path / "out"))
    try:
        wait_published(tmp_path, proc)
        status = until(lambda: (r := mm(tmp_path, "proxy-status")).returncode == 0 and
                       all(row[2:6] == ["SYNCED"] * 4 for row in rows(r.stdout)[1:]) and r.stdout,
                       "every sidecar SYNCED")
        table = rows(status)
        assert table[0] == ["NAME", "NODE", "CDS", "LDS", "EDS", "RDS", "PILOT", "VERSION"]
        kinds = {r[0]: r[-1].split()[0] for r in table[1:]}
        assert kinds == {"echo-v1-0": "minimesh-proxy", "env-v1-0": "envoy",
                         f"client@{p}c": "minimesh-proxy"}, status
        versions = {r[0]: r[-1] for r in table[1:]}
        assert versions["env-v1-0"].startswith("envoy 1.") and versions["echo-v1-0"].startswith("minimesh-proxy 0")
        applied = mm(tmp_path, "apply", "-f", str(rules))
        assert applied.returncode == 0 and "applied 1 file(s)" in applied.stdout, applied.stderr
        until(lambda: all(r[2:6] == ["SYNCED"] * 4 for r in rows(mm(tmp_path, "proxy-status").stdout)[1:]),
              "SYNCED after the apply")
        js = json.loads(mm(tmp_path, "proxy-status", "-o", "json").stdout)
        assert {x["name"] for x in js["proxies"]} == set(kinds)
        assert all(x["types"]["CDS"]["acked"].startswith(f"{js['generation']}-") or x["types"]["CDS"]["acked"]
                   for x in js["proxies"])
        for name, port in (("echo-v1-0", 8080), ("env-v1-0", 9000)):
            check_proxy_config(tmp_path, name, "echo", port)
        described = mm(tmp_path, "describe", "echo")
        assert described.returncode == 0, described.stderr
        text = described.stdout
        assert "DestinationRule: echo" in text and "subset v1 version=v1: echo-v1-0" in text
        assert "VirtualService: echo" in text and "-> echo/v1 100%; timeout 3000 ms" in text
        assert "mTLS (server side, PeerAuthentication): v1 PERMISSIVE  [default/default]" in text
        assert "mTLS (clients, auto): mTLS" in text
        d = json.loads(mm(tmp_path, "describe", "echo", "-o", "json").stdout)
        assert [e["instance"] for e in d["endpoints"]] == ["echo-v1-0"]
        assert mm(tmp_path, "describe", "nosuch").returncode == 1
        assert "no running sidecar 'nosuch'" in mm(tmp_path, "proxy-config", "clusters", "nosuch").stderr
        curl = mm(tmp_path, "exec", f"{p}c", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                  "http://echo:8080/")
        assert curl.stdout == "200", curl
        registry = json.loads(mm(tmp_path, "registry", "-o", "json").stdout)
        assert {"echo", "env"} <= set(registry["services"])
        # the shell's kubectl-style commands are forwarded as they are: get, delete -f (a path
        # relative to this terminal's directory)
        got = json.loads(mm(tmp_path, "get", "destinationrule", "echo", "-o", "json").stdout)
        assert got["metadata"]["name"] == "echo" and got["spec"]["host"] == "echo"
        deleted = mm(tmp_path, "delete", "-f", rules.name, cwd=tmp_path)
        assert deleted.returncode == 0 and 'virtualservice.networking.istio.io "echo" deleted' in deleted.stdout, \
            deleted.stderr
        assert "No resources found" in mm(tmp_path, "get", "virtualservice").stdout
    finally:
        rc, out, err = finish(tmp_path, proc, timeout=120)
    assert rc == 0, err
    assert_nothing_left(before)
