"""The fault commands of `minimesh up` (partition, heal, faults, crash...) on a real
network: commands piped on stdin, userspace link backend. Root only; every test checks
that nothing is left."""
from __future__ import annotations

import os

import pytest

from test_net_support import HA, HB, HC, assert_nothing_left, run_minimesh, snapshot, write_topology

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def pings(out: str) -> list[str]:
    return [c for c in out.split("minimesh> ") if c and " ping " in c.splitlines()[0]]


def test_partition_blocks_and_heal_restores(tmp_path):
    topo = write_topology(tmp_path)
    before = snapshot()
    script = "\n".join([f"partition {HA} {HB}", f"{HA} ping -c 1 -W 1 {HB}", f"{HA} ping -c 1 -W 1 {HC}",
                        "faults", "heal", f"{HA} ping -c 1 -W 1 {HB}", "faults"]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", input=script)
    assert rc == 0, err
    blocked, other, healed = pings(out)
    assert "1 packets transmitted, 0 received" in blocked, out
    assert "1 packets transmitted, 1 received" in other, out        # HC is not in the partition
    assert "1 packets transmitted, 1 received" in healed, out
    assert f"#0: partition ({HA} drops {HB}; {HB} drops {HA}) [groups {HA} | {HB}]" in out
    assert "healed #0: partition" in out
    assert out.rstrip().endswith("processes: none (no mesh)")
    assert "no outstanding faults" in out
    assert "at exit" not in out
    assert_nothing_left(before)


def test_isolate_is_healed_at_exit_and_errors_give_status_1(tmp_path):
    topo = write_topology(tmp_path)
    before = snapshot()
    script = "\n".join([f"partition isolate {HC}", f"{HA} ping -c 1 -W 1 {HC}", f"{HA} ping -c 1 -W 1 {HB}",
                        "crash pilot", "partition halves x", "faults"]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", input=script)
    assert rc == 1, err
    to_c, to_b = pings(out)
    assert "1 packets transmitted, 0 received" in to_c, out
    assert "1 packets transmitted, 1 received" in to_b, out
    assert "*** no processes are known without a mesh" in err
    assert "*** seed 'x': expected an integer" in err
    assert f"*** at exit: healed #0: partition ({HA} drops {HC}; {HB} drops {HC}; {HC} drops {HA},{HB})" in out
    assert_nothing_left(before)


def mesh_topology(p: str) -> str:
    hosts = ["c", "h1", "e1", "cp"]
    return "\n".join(["name: upfaults", "hosts:", *[f"  {p}{h}: {{}}" for h in hosts],
                      "switches:", f"  {p}s: {{}}", "links:",
                      *[f"  - {{between: [{p}{h}, {p}s]}}" for h in hosts]]) + f"""
mesh:
  registry: {{members: [{p}e1]}}
  control_plane: {{host: {p}cp}}
  security: {{}}
  clients: [{p}c]
  services:
    echo: {{port: 8080, run: "builtin:echo", versions: {{v1: {{hosts: [{p}h1]}}}}}}
"""


def test_mesh_crash_restart_pause_citadel(tmp_path):
    """With a mesh, crash/restart/pause name the processes of Mesh.fault_target() (Citadel,
    with security on). Observed with ps: gone after crash, a new pid after restart, state T
    (stopped) after pause; the pause is healed at exit."""
    from test_net_support import TAG
    p = f"uf{TAG}"
    topo = tmp_path / f"{p}.yaml"
    topo.write_text(mesh_topology(p))
    before = snapshot()
    ps = f"{p}cp ps -eo pid=,stat=,args= | grep '[m]esh.citadel.server .*{tmp_path}' || echo NONE"
    script = "\n".join(["faults", ps, "crash citadel", ps, "faults", "restart citadel", ps,
                        "pause citadel", ps, "crash citadel"]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace",
                                "--out", str(tmp_path / "out"), input=script, timeout=120)
    assert rc == 1, err                                         # the last crash is refused
    assert "processes: citadel" in out
    chunks = [c.splitlines() for c in out.split("minimesh> ") if c.startswith(f"{p}cp ps")]
    first, crashed, restarted, paused = ([ln.split() for ln in c[1:]] for c in chunks)
    assert len(first) == 1 and first[0][1].startswith("S"), out
    assert crashed == [["NONE"]], out
    assert len(restarted) == 1 and restarted[0][0] != first[0][0] and restarted[0][1].startswith("S"), out
    assert len(paused) == 1 and paused[0][0] == restarted[0][0] and paused[0][1].startswith("T"), out
    assert "healed #0: crash citadel (SIGKILL) (restart citadel)" in out
    assert "*** citadel is already paused: resume citadel first" in err
    assert "*** at exit: healed #1: pause citadel" in out
    from testbed.history import read_history                    # the mesh's process faults, recorded
    recs = read_history(tmp_path / "out" / "history.jsonl").faults
    assert [(r.fault_id, r.phase, r.description, r.actions) for r in recs] == [
        (0, "apply", "crash citadel (SIGKILL)", ("SIGKILL citadel",)),
        (0, "revert", "crash citadel (SIGKILL)", ("restart citadel",)),
        (1, "apply", "pause citadel", ("SIGSTOP citadel",)), (1, "revert", "pause citadel", ("SIGCONT citadel",))]
    pilot = [e for e in read_history(tmp_path / "out" / "history.jsonl").events if e.source == "pilot"]
    assert {"start", "config", "push", "ack"} <= {e.kind for e in pilot}     # Pilot's events, on the same clock
    assert all(0 <= e.t <= recs[-1].t_end + 30 for e in pilot)
    assert_nothing_left(before)


def test_mesh_instance_crash_and_restart(tmp_path):
    """An instance is a fault-target process too: `crash` kills its app, sidecar and agent
    (requests to the service fail), `restart` brings it back (requests succeed again)."""
    from test_net_support import TAG
    p = f"ui{TAG}"
    topo = tmp_path / f"{p}.yaml"
    topo.write_text(mesh_topology(p))
    before = snapshot()
    code = f"{p}c curl -s -m 2 -o /dev/null -w 'code=%{{http_code}}\\n' http://echo:8080/"
    back = (f"{p}c sh -c 'for i in $(seq 100); do c=$(curl -s -m 1 -o /dev/null -w %{{http_code}} "
            f"http://echo:8080/); [ \"$c\" = 200 ] && echo BACK && exit; sleep 0.2; done; echo NEVER'")
    script = "\n".join(["faults", code, "crash echo-v1-0", code, "restart echo-v1-0", back]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", input=script,
                                timeout=120)
    assert rc == 0, err
    assert "echo-v1-0" in out and "pilot" in out                # listed by `faults`
    codes = [ln for ln in out.splitlines() if ln.startswith("code=")]
    assert codes[0] == "code=200" and codes[1] != "code=200", out
    lines = out.splitlines()
    assert "BACK" in lines and "NEVER" not in lines, out
    assert_nothing_left(before)


def test_out_history_records_every_fault_op_and_the_heal_at_exit(tmp_path):
    """`up --out DIR`: link commands and fault commands are fault ops in DIR/history.jsonl
    (apply/revert pairs with what was done), the heal at exit included; a second session
    on the same DIR is refused (exit 2) and leaves the history alone."""
    from testbed.history import fault_windows, read_history
    from test_net_support import SW
    topo = write_topology(tmp_path)
    out_dir = tmp_path / "out"
    before = snapshot()
    script = "\n".join([f"partition {HA} {HB}", f"{HA} ping -c 1 -W 1 {HB}", f"link-set {HA} {SW} delay=20ms",
                        f"drop {HB} {HC} oneway", "heal", f"{HA} ping -c 1 -W 1 {HB}",
                        f"partition isolate {HC}", f"link-down {HB} {SW}"]) + "\n"
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", "--out", str(out_dir),
                                input=script)
    assert rc == 0, err
    blocked, healed = pings(out)
    assert "1 packets transmitted, 0 received" in blocked and "1 packets transmitted, 1 received" in healed, out
    data = read_history(out_dir / "history.jsonl")
    assert not data.truncated
    ops = [(r.fault_id, r.phase, r.fault["kind"]) for r in data.faults]
    assert ops == [(0, "apply", "partition"), (1, "apply", "link"), (2, "apply", "cut"),
                   (2, "revert", "cut"), (1, "revert", "link"), (0, "revert", "partition"),   # heal
                   (3, "apply", "partition"), (4, "apply", "link-down"),
                   (4, "revert", "link-down"), (3, "revert", "partition")], ops             # at exit
    assert all(r.ok and r.actions for r in data.faults), data.faults
    assert data.faults[1].description == f"link {HA}-{SW} delay=20ms"
    assert data.faults[4].actions[0].startswith(f"link {HA}-{SW} {HA}->{SW} back to delay=5ms")
    assert all(end is not None for _, end, _ in fault_windows(data.faults))
    assert [(e.source, e.kind) for e in data.events] == [("minimesh-up", "session_start"),
                                                         ("minimesh-up", "session_end")]
    t = [r.t_start for r in data.faults]
    assert t == sorted(t) and data.events[0].t <= t[0] and data.faults[-1].t_end <= data.events[1].t
    assert data.events[1].details["how"] == "exit"
    assert "*** at exit: healed #4: link-down" in out
    size = (out_dir / "history.jsonl").stat().st_size
    rc, _, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace", "--out", str(out_dir))
    assert rc == 2 and "a history is never overwritten" in err, err
    assert (out_dir / "history.jsonl").stat().st_size == size
    assert_nothing_left(before)


def test_out_history_is_written_as_it_happens_and_healed_on_sigterm(tmp_path):
    """The apply is in the file while the session runs; SIGTERM still heals, and the
    revert and the session's end are recorded before teardown."""
    import signal
    import time

    from testbed.history import read_history
    from test_net_support import interactive_up, terminate, type_until
    topo = write_topology(tmp_path)
    hist = tmp_path / "out" / "history.jsonl"
    before = snapshot()
    proc = interactive_up(tmp_path, str(topo), "--link-backend", "userspace", "--out", str(tmp_path / "out"))
    try:
        type_until(proc, f"partition isolate {HA}\n", "#0: partition")
        running = read_history(hist)
        assert [(r.fault_id, r.phase, r.ok) for r in running.faults] == [(0, "apply", True)]
        time.sleep(0.2)
    finally:
        _, err = terminate(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    data = read_history(hist)
    assert [(r.fault_id, r.phase, r.ok) for r in data.faults] == [(0, "apply", True), (0, "revert", True)]
    assert data.events[-1].kind == "session_end" and data.events[-1].details["how"] == "Terminated"
    assert_nothing_left(before)
