"""Stock Mininet's own example tests on a full kernel: inside a user-mode-linux guest, with
Open vSwitch's kernel datapath and its test controller, as most Mininet users run them.

    sudo python -m tests.support.stock_mininet [--quick] [--only test_a,test_b] [--json FILE]

On the host this boots a guest (tests/support/uml.py) that runs ``--in-guest``: start
ovsdb-server and ovs-vswitchd with every file under the guest's /run (the host's
/etc/openvswitch and /var/log are left alone), then each
/usr/share/doc/mininet/examples/test/test_*.py under the system python3 (``python -m
unittest -v``, Mininet's examples as installed by Debian), with ``mn -c`` between tests.
Prints one markdown row per test: result, time, and why when not OK (docs/mininet.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TEST_DIR = Path("/usr/share/doc/mininet/examples/test")
OVS_RUN = "/run/openvswitch"
SYSTEM_PYTHON = "/usr/bin/python3"
OVS_ENV = {"OVS_RUNDIR": OVS_RUN, "OVS_LOGDIR": OVS_RUN, "OVS_DBDIR": OVS_RUN,
           "OVS_SYSCONFDIR": OVS_RUN}


def start_ovs() -> None:
    """ovsdb-server + ovs-vswitchd on a fresh database in the guest's /run (OVS_* dirs)."""
    os.makedirs(OVS_RUN, exist_ok=True)
    os.environ.update(OVS_ENV)
    db = f"{OVS_RUN}/conf.db"
    subprocess.run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
    subprocess.run(["ovsdb-server", db, f"--remote=punix:{OVS_RUN}/db.sock", "--pidfile", "--detach",
                    f"--log-file={OVS_RUN}/ovsdb-server.log"], check=True)
    subprocess.run(["ovs-vsctl", "--no-wait", "init"], check=True)
    subprocess.run(["ovs-vswitchd", "--pidfile", "--detach", f"--log-file={OVS_RUN}/ovs-vswitchd.log"],
                   check=True)


_RAN = re.compile(r"^Ran (\d+) tests? in ([0-9.]+)s", re.M)
_END = re.compile(r"^(OK|FAILED)(?: \((.*)\))?\s*$", re.M)
_SKIP = re.compile(r"\.\.\. skipped '([^']*)'")


def run_one(path: Path, quick: bool, timeout: float) -> dict:
    """One example test file, as Mininet's runner would run it (unittest, -quick honoured)."""
    # the example tests read -quick from sys.argv when imported (runner.py's flag); unittest's
    # own parser would reject it, so it is there for the import only
    argv = [SYSTEM_PYTHON, "-c", "import sys, unittest; sys.argv[1:] = sys.argv[2:]; "
            f"m = __import__({path.stem!r}); unittest.main(module=m, argv=['{path.name}', '-v'])",
            path.stem] + (["-quick"] if quick else [])
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=path.parent, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        rc = None
    elapsed = time.monotonic() - t0
    subprocess.run(["mn", "-c"], capture_output=True)  # what runner.py does after a failure
    ran, end = _RAN.search(out), _END.search(out)
    result = "TIMEOUT" if rc is None else (end.group(1) if end else f"exit {rc}")
    return {"test": path.stem, "result": result, "detail": end.group(2) if end and end.group(2) else "",
            "tests": int(ran.group(1)) if ran else 0, "seconds": round(elapsed, 1),
            "skipped": _SKIP.findall(out), "tail": "" if result == "OK" else out[-1500:]}


def in_guest(args: argparse.Namespace) -> int:
    # Mininet's example tests spawn `python -m mininet.examples.X`: Debian 12 has only python3.
    # Mininet's Controller runs `controller` (the OpenFlow reference controller, which Debian
    # does not package): ovs-testcontroller is its stand-in, as Mininet's install.sh links it
    os.makedirs("/run/mm-python", exist_ok=True)
    for name, target in (("python", SYSTEM_PYTHON), ("controller", "/usr/bin/ovs-testcontroller")):
        if not os.path.exists(f"/run/mm-python/{name}"):
            os.symlink(target, f"/run/mm-python/{name}")
    os.environ["PATH"] = "/run/mm-python:" + os.environ["PATH"]
    start_ovs()
    # the first network after OVS starts loses its first pings in the guest (the datapath's
    # first use, 1 CPU); every later one does not. One `mn --test pingall` first, recorded
    t0 = time.monotonic()
    warm = subprocess.run(["mn", "--test", "pingall"], capture_output=True, text=True, timeout=120)
    drop = re.search(r"Results: (\d+)% dropped", warm.stdout + warm.stderr)
    rows: list[dict] = [{"test": "(warm-up: mn --test pingall)", "result": f"{drop.group(1) if drop else '?'}% dropped",
                         "detail": "", "tests": 0, "seconds": round(time.monotonic() - t0, 1),
                         "skipped": [], "tail": ""}]
    subprocess.run(["mn", "-c"], capture_output=True)
    tests = sorted(TEST_DIR.glob("test_*.py"))
    if args.only:
        tests = [t for t in tests if t.stem in args.only.split(",")]
    for t in tests:  # written after each test: a guest killed at its timeout keeps what ran
        rows.append(run_one(t, args.quick, args.per_test_timeout))
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| example test | result | tests | time (s) | note |", "|---|---|---|---|---|"]
    for r in rows:
        note = r["detail"]
        if r["skipped"]:
            note = (note + "; " if note else "") + "skipped: " + ", ".join(sorted(set(r["skipped"])))
        lines.append(f"| {r['test']} | {r['result']} | {r['tests']} | {r['seconds']:.1f} | {note} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="Mininet's -quick: skip its long tests")
    ap.add_argument("--only", default="", help="comma-separated test names (test_X)")
    ap.add_argument("--per-test-timeout", type=float, default=400)
    ap.add_argument("--timeout", type=float, default=3000, help="the whole guest")
    ap.add_argument("--json", default="/run/mm-out/stock-mininet.json")
    ap.add_argument("--outdir", type=Path, help="the guest's files (default: a new temp dir)")
    args = ap.parse_args()
    if args.in_guest:
        return in_guest(args)
    from tests.support.uml import REPO, run_in_guest   # late: the host side only
    argv = [sys.executable, "-m", "tests.support.stock_mininet", "--in-guest",
            "--per-test-timeout", str(args.per_test_timeout)] + (["--quick"] if args.quick else []) \
        + (["--only", args.only] if args.only else [])
    res = run_in_guest(argv, timeout=args.timeout, cwd=REPO, outdir=args.outdir)
    if res.returncode != 0:
        print(res.output[-3000:], file=sys.stderr)
        return res.returncode
    rows = json.loads((res.outdir / "stock-mininet.json").read_text())
    print(table(rows))
    print(f"\nguest: boot {res.boot_s:.1f} s, whole run {res.run_s:.0f} s; "
          f"{sum(r['result'] == 'OK' for r in rows)} of {len(rows) - 1} files OK (after the warm-up); "
          f"files in {res.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
