"""The shared experiment runner: each script in experiments/ is a topology, a ``run(ctx)``
that starts services, workload and fault schedule, and an ``analyze(ctx, history)`` that
turns the history into verdicts. Everything else lives here:

    EXPERIMENT = Experiment("link_delay", __doc__, TOPOLOGY, run, analyze, configure)
    if __name__ == "__main__":
        sys.exit(EXPERIMENT.main())

Command line (every experiment): ``--out DIR`` (default ./results/<name>-<timestamp>),
``--seed N``, ``--quick`` (the whole run <= 60 s), ``--capture DIR`` (default <out>/pcap;
``--no-capture`` to skip), ``--link-backend auto|netem|userspace``.

One run: clean stale journals, build the Testbed (:func:`testbed.net.lifecycle.run_testbed`: torn down
on every exit path, SIGTERM included), start tcpdump on every host interface, open
``history.jsonl`` on a :class:`RunClock`, call ``run(ctx)`` (a live rich panel on a
terminal), stop every process it started, stop the capture, tear down. Then ``analyze`` reads
the history back, the default plot (``timeline.png``: latency and success rate per second,
fault windows shaded) is drawn, captures get fault comments and a name-resolution block,
``results.json`` is written, and ``report.html`` (testbed.ui.page.report: the run on one
self-contained page, docs/ui.md). Exit status 0 only when every verdict is valid.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import random
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import yaml

import testbed.mesh.citadel.faults  # noqa: F401  (registers the identity fault kinds: cert-revoke, ca-stop, ...)
from testbed.faults.schedule import Nemesis
from testbed.faults.targets import TestbedTarget
from testbed.history import History, HistoryData, RunClock, read_history
from testbed.mesh.spec import mesh_names     # importing it registers the topology's mesh: section
from testbed.net.lifecycle import require_root, run_testbed
from testbed.paths import hand_over_tree, user_dir
from testbed.paths import REPO, child_env
from testbed.run.capture import Capture
from testbed.run.config_sync import wait_for_config
from testbed.run.outlier_events import import_mesh_logs
from testbed.run.results import LiveProgress, plot_timeline, read_results, write_results
from testbed.run.workload import workload_argv
from testbed.topology.load import load_topology
from testbed.topology.spec import TopologyError
from testbed.ui.page.report import write_report

if TYPE_CHECKING:
    from testbed.faults.base import NemesisTarget
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.running import RunningTestbed

__all__ = ["Claim", "Context", "Experiment", "start_mesh", "register_live_view"]


@dataclass(frozen=True)
class Claim:
    """A verdict made in an experiment: ``valid`` plus the numbers it rests on."""

    valid: bool
    detail: str
    numbers: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What ``run`` and ``analyze`` get. ``procs`` are stopped at the end of the run."""

    name: str
    args: argparse.Namespace
    out: Path
    seed: int
    quick: bool
    tb: RunningTestbed = None  # type: ignore[assignment]  # None until the network is up; run(ctx) sees it set
    clock: RunClock = field(default_factory=RunClock)   # replaced by the run's when it starts
    history: History | None = None
    rng: random.Random = field(default_factory=random.Random)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)      # ip -> label for Wireshark
    metrics: dict[str, Any] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    keylog: Path | None = None
    nemeses: list[Nemesis] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)   # run at the end, newest first
    finishers: list[Callable[[], Any]] = field(default_factory=list)  # at the end, history still open
    topology: Any = None
    mesh_hooks: list[Callable[[Any], Any]] = field(default_factory=list)   # called with each started mesh

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def logs(self) -> Path:
        p = self.out / "logs"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def popen(self, host: str, argv: Sequence[str], name: str) -> subprocess.Popen:
        """Start ``argv`` in ``host`` (journaled), output to logs/<name>.log; stopped at the end."""
        if name in self.procs and self.procs[name].poll() is None:
            raise ValueError(f"process name {name!r} is already running")
        with open(self.logs / f"{name}.log", "ab") as log:
            p = self.tb.popen(host, list(argv), cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                              env=child_env())
        self.procs[name] = p
        return p

    def wait_tcp(self, host: str, ip: str, port: int, timeout_s: float = 20.0, proc: str | None = None) -> None:
        """Until a TCP connect from ``host`` to ip:port succeeds; raises with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc and self.procs[proc].poll() is not None:
                break
            if "open" in self.tb.host(host).cmd(f"timeout 1 bash -c '</dev/tcp/{ip}/{port}' && echo open"):
                return
            time.sleep(0.2)
        tail = (self.logs / f"{proc}.log").read_text(errors="replace")[-1500:] if proc else ""
        raise RuntimeError(f"{ip}:{port} not reachable from {host} within {timeout_s:g} s\n{tail}")

    def workload(self, host: str, kind: str, rate: float, duration_s: float, start_s: float | None = None,
                 name: str = "workload", **options: Any) -> subprocess.Popen:
        """``python -m testbed.run.workload KIND`` in ``host``, writing into this run's history."""
        assert self.history is not None and self.history.path is not None
        t0 = time.monotonic() - self.clock.now()
        start = self.clock.now() + 0.3 if start_s is None else start_s
        argv = workload_argv(self.python, kind, str(self.history.path), t0, rate, duration_s, start, **options)
        p = self.popen(host, argv, name)
        self.event("experiment", "workload_started", name=name, host=host, workload=kind, rate=rate,
                   duration_s=duration_s, start_s=round(start, 3))
        return p

    def wait(self, name: str, timeout_s: float) -> int:
        return self.procs[name].wait(timeout_s)

    def stop(self, name: str, timeout_s: float = 5.0) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def nemesis(self, processes: Mapping[str, Any] | None = None,
                restarters: Mapping[str, Callable[[], Any]] | None = None,
                target: NemesisTarget | None = None) -> Nemesis:
        """A :class:`~testbed.faults.schedule.Nemesis` on this testbed (or on ``target``, e.g.
        ``mesh.fault_target()`` for crashes of mesh processes), recording into the history;
        healed at the end of the run whatever happens."""
        nem = Nemesis(target if target is not None else TestbedTarget(self.tb, processes, restarters),
                      self.clock, self.history)
        self.nemeses.append(nem)
        return nem

    def host_link(self, host: str) -> tuple[str, str]:
        """``(host, peer)``: the ends of the one link of ``host`` in the topology (its switch,
        say), e.g. for ``LinkChange(*ctx.host_link("web"), {"delay": "50ms"})``."""
        ends = [(lk.node1, lk.node2) if lk.node1 == host else (lk.node2, lk.node1)
                for lk in self.topology.links if host in (lk.node1, lk.node2)]
        if len(ends) != 1:
            raise ValueError(f"{host} has {len(ends)} links in topology {self.topology.name!r}, "
                             "not one: name both ends")
        return ends[0]

    def sleep_until(self, t: float) -> None:
        self.clock.sleep_until(t)

    def event(self, source: str, kind: str, **details: Any) -> None:
        assert self.history is not None
        self.history.event(source, kind, **details)

    def claim(self, name: str, valid: bool, detail: str, **numbers: Any) -> Claim:
        c = Claim(bool(valid), detail, numbers)
        self.verdicts[name] = c
        return c


def start_mesh(ctx: Context, rules: str | None = None, spec: Any = None, tag: str = "",
               pilot_etcd: tuple[str, ...] = ()) -> Mesh:
    """The topology's ``mesh:`` section (or ``spec``, e.g. with other registry timeouts)
    deployed (testbed.mesh.deploy.mesh.Mesh), ``rules`` (Istio YAML) applied and in force in
    every sidecar (:func:`~testbed.run.config_sync.wait_for_config`); stopped at the end
    of the run (or by ``mesh.stop()``), ``pilot_etcd``: the members Pilot may use (default all),
    logs kept under <out>/mesh-logs[-tag], Pilot's events
    and the sidecars' outlier ejections (testbed.run.outlier_events) copied into the history
    (sources ``pilot``, ``sidecar:<name>``; with a ``tag``, ``config=tag`` added to each)."""
    from testbed.mesh.deploy.mesh import Mesh   # late: the deployment loads cryptography; not every run has a mesh
    logs = ctx.out / ("mesh-logs" + (f"-{tag}" if tag else ""))
    extra = {"config": tag} if tag else {}

    class ExperimentMesh(Mesh):
        def stop(self) -> list[str]:   # keep the logs and Pilot's events (not etcd's preallocated WALs)
            if self._started and self.run_dir is not None and self.run_dir.exists():
                shutil.copytree(self.run_dir / "logs", logs, dirs_exist_ok=True)
                if self.events.exists():
                    shutil.copy(self.events, logs / "pilot-events.jsonl")
            return super().stop()
    mesh = ExperimentMesh(ctx.tb, spec if spec is not None else ctx.topology.sections["mesh"], pilot_etcd=pilot_etcd)
    ctx.closers.append(mesh.stop)
    mesh.start()
    ctx.names.update(mesh_names(mesh.spec, ctx.tb.ip))
    for hook in ctx.mesh_hooks:       # e.g. the live view (--ui) follows the mesh
        hook(mesh)

    def copy_events() -> None:   # Pilot's events, sidecars' outlier logs: from the run dir, else the kept copy
        assert ctx.history is not None
        run_dir = mesh.run_dir
        if run_dir is not None and run_dir.exists():
            import_mesh_logs(ctx.history, ctx.clock.wall0, run_dir / "logs", mesh.events, mesh.spec, **extra)
        else:
            import_mesh_logs(ctx.history, ctx.clock.wall0, logs, logs / "pilot-events.jsonl", mesh.spec, **extra)
    ctx.finishers.append(copy_events)
    if rules:
        mesh.apply_text(rules, "rules.yaml")
        docs = [d for d in yaml.safe_load_all(rules) if isinstance(d, dict)]
        names = " ".join(f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}" for d in docs)
        ctx.event("experiment", "rules_applied", rules=names)
        wait_for_config(mesh, f"the rules ({names})")
    return mesh


# (ctx, ADDR:PORT) -> stop: what ``--ui`` starts once the run's history is open. Registered
# by the live view's plug-in (testbed.ui.experiment, imported by experiments/_bootstrap.py);
# the runner does not import it (testbed.ui sits above testbed.run).
LiveView = Callable[[Context, str], Callable[[], None]]
_live_views: list[LiveView] = []


def register_live_view(view: LiveView) -> None:
    _live_views.append(view)


def _start_live_views(ctx: Context) -> list[Callable[[], None]]:
    listen = getattr(ctx.args, "ui", None)
    if not listen:
        return []
    if not _live_views:
        raise RuntimeError("--ui: no live view is registered (run the script from experiments/: its "
                           "_bootstrap imports testbed.ui.experiment)")
    return [view(ctx, listen) for view in _live_views]


RunFn = Callable[[Context], None]
AnalyzeFn = Callable[[Context, HistoryData], None]


@dataclass(frozen=True)
class Experiment:
    name: str
    doc: str
    topology: Path
    run: RunFn
    analyze: AnalyzeFn
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    duration_hint_s: float | None = None

    def parser(self) -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog=f"experiments/{self.name}.py", description=self.doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--out", type=Path, help=f"results directory (default ./results/{self.name}-<timestamp>)")
        ap.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
        ap.add_argument("--quick", action="store_true", help="short run (<= 60 s), as the test suite runs it")
        ap.add_argument("--capture", type=Path, help="pcapng directory (default <out>/pcap)")
        ap.add_argument("--no-capture", action="store_true", help="no packet capture")
        ap.add_argument("--link-backend", choices=("auto", "netem", "userspace"), default="auto")
        ap.add_argument("--ui", nargs="?", const="127.0.0.1:0", metavar="ADDR:PORT",
                        help="serve the live view of the run (read-only; docs/ui.md), default 127.0.0.1 on a "
                             "free port, printed at start")
        if self.configure:
            self.configure(ap)
        return ap

    def main(self, argv: Sequence[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = user_dir((args.out or Path("results") / f"{self.name}-{stamp}").resolve())
        (out / "history.jsonl").unlink(missing_ok=True)
        require_root(f"run experiments/{self.name}.py")
        try:
            topology = load_topology(self.topology)
        except TopologyError as e:
            print(e, file=sys.stderr)
            return 2
        ctx = Context(self.name, args, out, args.seed, args.quick, rng=random.Random(args.seed), topology=topology)
        ctx.params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        capture_dir = None if args.no_capture else (args.capture or out / "pcap").resolve()
        state: dict[str, Any] = {}
        started = time.monotonic()
        status = run_testbed(f"run {self.name}", topology, args.link_backend,
                             lambda tb: self._run(ctx, tb, capture_dir, state), sigint=True)
        return self._finish(ctx, state, status, time.monotonic() - started)

    def _run(self, ctx: Context, tb: RunningTestbed, capture_dir: Path | None, state: dict[str, Any]) -> int:
        ctx.tb, ctx.clock = tb, RunClock()
        for h in tb.host_names:
            ctx.names.setdefault(tb.ip(h), h)
        cap = None
        state["wall0"] = ctx.clock.wall0
        try:
            cap = state["capture"] = Capture(tb, capture_dir).start() if capture_dir else None
            with History(ctx.out / "history.jsonl", clock=ctx.clock) as hist:
                ctx.history = hist
                ctx.closers.extend(_start_live_views(ctx))
                try:
                    if sys.stdout.isatty():
                        with LiveProgress(hist, ctx.clock, self.duration_hint_s, title=self.name):
                            self.run(ctx)
                    else:
                        self.run(ctx)
                finally:
                    for nem in ctx.nemeses:          # every run ends healed, recorded in the history
                        try:
                            nem.heal()
                        except Exception as e:
                            state.setdefault("error", f"heal failed: {e}")
                    for finish in ctx.finishers:     # e.g. import Pilot's events into the history
                        finish()
        except Exception as e:
            state["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            for name in reversed(list(ctx.procs)):     # workloads (started last) first
                ctx.stop(name)
            for close in reversed(ctx.closers):
                try:
                    close()
                except Exception as e:
                    state.setdefault("error", f"stopping: {type(e).__name__}: {e}")
            if cap is not None:
                try:
                    cap.stop()
                except (subprocess.CalledProcessError, OSError) as e:
                    state.setdefault("error", f"stopping the capture: {e}")
        return 0

    def _finish(self, ctx: Context, state: dict[str, Any], status: int, elapsed_s: float) -> int:
        if "error" in state:
            ctx.claim("experiment ran", False, state["error"])
        elif status != 0:
            ctx.claim("experiment ran", False, f"interrupted or failed to build the network (exit status {status})")
        path = ctx.out / "history.jsonl"
        data = read_history(path) if path.exists() else HistoryData(())
        if "error" not in state and status == 0:
            try:
                self.analyze(ctx, data)
            except Exception as e:
                traceback.print_exc()
                ctx.claim("analysis ran", False, f"{type(e).__name__}: {e}")
        if data.requests or data.etcd:     # every experiment: its requests, else its etcd operations
            plot_timeline(ctx.out / "timeline.png", data.requests, data.faults, title=self.name,
                          events=data.events, etcd=data.etcd)
        cap = state.get("capture")
        if cap is not None:
            try:
                ctx.metrics["capture_comments"] = cap.annotate(
                    data.faults, state["wall0"], [e for e in data.events if e.source == "experiment"])
                if ctx.keylog is not None:
                    cap.inject_secrets(ctx.keylog)
                cap.write_names(ctx.names)        # last: editcap drops name resolution blocks
                ctx.metrics["capture_dir"] = str(cap.dir)
            except (subprocess.CalledProcessError, OSError, ValueError) as e:
                ctx.claim("capture post-processed", False, f"{e}: {getattr(e, 'stderr', '')}")
        ctx.metrics["elapsed_s"] = round(elapsed_s, 1)
        ctx.params["host"] = socket.gethostname()
        write_results(ctx.out, self.name, ctx.seed, ctx.params, ctx.metrics, ctx.verdicts or
                      {"verdicts": Claim(False, "the experiment made no checks")})
        try:
            write_report(ctx.out, ctx.topology, title=self.name, captures=cap.dir if cap is not None else None)
        except Exception as e:     # the results stand without their page; the failure is shown
            traceback.print_exc()
            print(f"*** report.html not written: {type(e).__name__}: {e}", file=sys.stderr)
        for d in {ctx.out, *([cap.dir] if cap is not None else [])}:
            hand_over_tree(d)       # logs, plots, captures: the sudo user's, readable
        passed = report(ctx)
        return status if status != 0 else passed


def report(ctx: Context) -> int:
    res = read_results(ctx.out)
    if (ctx.out / "report.html").exists():
        print(f"\n=== {ctx.name}: report {ctx.out / 'report.html'}")
    print(f"\n=== {ctx.name}: checks")
    for name, v in res["verdicts"].items():
        detail = v.get("detail") or ", ".join(f"{k}={v[k]}" for k in list(v)[1:6])
        print(f"  [{'ok' if v['valid'] else 'FAIL'}] {name}: {detail}")
    print(f"{'PASS' if res['valid'] else 'FAIL'}: results in {ctx.out}", flush=True)
    return 0 if res["valid"] else 1
