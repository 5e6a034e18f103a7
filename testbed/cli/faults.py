"""Fault commands for ``minimesh up``: the fault model (testbed.faults.kinds) from the CLI.

    partition h1,h2 h3,h4      groups (comma-separated hosts) that cannot talk to each other
    partition isolate h1       h1 cut off from every other host
    partition halves [SEED]    a grudge builder over all hosts: halves, ring, bridge, isolate-one
    heal                       revert every outstanding fault
    crash NAME [SIGNAL]        signal a process (default SIGKILL); heal or restart brings it back
    restart NAME               restart a process (a crashed one: ends its crash)
    pause NAME / resume NAME   SIGSTOP / SIGCONT
    faults                     outstanding faults, and the processes crash/pause can name

The link commands are fault values too (parsed in :mod:`testbed.cli.shell`, applied here):
``link-set`` is a ``LinkChange``, ``link-down`` a ``LinkDown`` (``link-up`` reverts it),
``drop`` a ``Cut`` (oneway) or a two-host ``Partition`` (``restore`` reverts drops).

One :class:`FaultSession` (one :class:`~testbed.faults.schedule.Nemesis`) per CLI session,
so ``heal`` reverts everything still applied; :meth:`FaultSession.close` heals at the end
of the session. Given a :class:`~testbed.history.History`, the Nemesis appends every op
(apply/revert, with what was done) to it as it happens. The session is sans-IO: commands
return the text to print and raise :class:`FaultCommandError` for a bad command;
:class:`FaultCommands` is the Mininet CLI mixin that prints and counts errors.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable

from testbed.faults.kinds import Crash, Cut, LinkChange, LinkDown, Partition, Pause, Restart
from testbed.faults.base import Fault, FaultError
from testbed.faults.grudge import GRUDGE_BUILDERS, Grudge, GrudgeError, complete
from testbed.faults.schedule import HealError, Nemesis
from testbed.faults.targets import TargetError, TestbedTarget
from testbed.history import RunClock
import testbed.mesh.citadel.faults  # noqa: F401  (registers the identity fault kinds: cert-revoke, ca-stop, ...)
from testbed.net.running import RunningTestbed

__all__ = ["FaultSession", "FaultCommands", "FaultCommandError", "parse_partition", "BUILDER_ALIASES"]

PARTITION_USAGE = ("usage: partition H1,H2 H3,H4 ... | partition isolate HOST | "
                   "partition halves|ring|bridge|isolate-one [SEED]")
BUILDER_ALIASES = {"halves": "random-halves", "ring": "majorities-ring", **{n: n for n in GRUDGE_BUILDERS}}
NO_PROCESSES = ("no processes are known without a mesh: crash/restart/pause/resume need a topology "
                "with a mesh: section")
NO_MESH_PROCESSES = "the mesh's fault target (Mesh.fault_target()) names no processes"


class FaultCommandError(ValueError):
    """A fault command is malformed or cannot be done now."""


def _seed(word: str | None, draw: Callable[[], int]) -> int:
    if word is None:
        return draw()
    try:
        return int(word)
    except ValueError:
        raise FaultCommandError(f"seed {word!r}: expected an integer; {PARTITION_USAGE}") from None


def parse_partition(line: str, hosts: Iterable[str], draw_seed: Callable[[], int] = lambda: 0
                    ) -> tuple[Grudge, str]:
    """A partition command's arguments -> (grudge, how it was built, e.g. 'random-halves seed 7').
    ``hosts``: the topology's hosts (every name must be one; the builders draw from them)."""
    known = sorted(set(hosts))
    words = line.split()
    if not words:
        raise FaultCommandError(PARTITION_USAGE)

    def check(names: Iterable[str]) -> None:
        for n in names:
            if n not in known:
                raise FaultCommandError(f"no host {n!r}; hosts: {', '.join(known)}")

    try:
        if words[0] == "isolate":
            if len(words) != 2:
                raise FaultCommandError(PARTITION_USAGE)
            check(words[1:])
            return complete([[words[1]], [h for h in known if h != words[1]]]), f"isolate {words[1]}"
        if words[0] in BUILDER_ALIASES:
            if len(words) > 2:
                raise FaultCommandError(PARTITION_USAGE)
            name = BUILDER_ALIASES[words[0]]
            seed = _seed(words[1] if len(words) == 2 else None, draw_seed)
            return GRUDGE_BUILDERS[name](known, random.Random(seed)), f"{name} seed {seed}"
        groups = [[n for n in w.split(",") if n] for w in words]
        if len(groups) < 2 or not all(groups):
            raise FaultCommandError(f"need at least two groups of hosts; {PARTITION_USAGE}")
        for g in groups:
            check(g)
        return complete(groups), "groups " + " | ".join(",".join(g) for g in groups)
    except GrudgeError as e:
        raise FaultCommandError(str(e)) from None


class FaultSession:
    """The CLI's fault state: a Nemesis on ``target``; ``hosts`` and ``processes`` (callables,
    read at each command) name what partitions and process faults may use."""

    def __init__(self, target: Any, clock: Any, hosts: Callable[[], Iterable[str]],
                 processes: Callable[[], Iterable[str]], seeds: random.Random | None = None,
                 no_processes: str = NO_PROCESSES, history: Any = None):
        self.nemesis = Nemesis(target, clock, history)
        self.hosts, self.processes, self.no_processes = hosts, processes, no_processes
        self._seeds = seeds or random.Random()

    # --- commands: each returns the text to print ----------------------------------------

    def partition(self, line: str) -> str:
        grudge, how = parse_partition(line, self.hosts(), lambda: self._seeds.randrange(2**31))
        return self._apply(Partition(grudge), f" [{how}]")

    def heal(self, line: str = "") -> str:
        self._no_args(line, "heal")
        if not self.nemesis.outstanding:
            return "nothing to heal\n"
        names = [(fid, op.fault.describe()) for fid, op in reversed(self.nemesis.outstanding.items())]
        try:
            self.nemesis.heal()
        except HealError as e:
            raise FaultCommandError(str(e)) from None
        return "".join(f"healed #{fid}: {d}\n" for fid, d in names)

    def crash(self, line: str) -> str:
        words = line.split()
        if len(words) not in (1, 2):
            raise FaultCommandError("usage: crash NAME [SIGNAL]  (default SIGKILL)")
        name = self._process(words[0], "crash", free=True)
        try:
            fault = Crash(name, words[1]) if len(words) == 2 else Crash(name)
        except FaultError as e:
            raise FaultCommandError(str(e)) from None
        return self._apply(fault, f"  (restart {name} or heal brings it back)")

    def restart(self, line: str) -> str:
        name = self._process(self._one(line, "restart"), "restart")
        crashed = self._outstanding(Crash, name)
        if crashed is not None:
            return self._revert(crashed)
        if self._outstanding(Pause, name) is not None:
            raise FaultCommandError(f"{name} is paused: resume {name} first")
        return self._apply(Restart(name))

    def pause(self, line: str) -> str:
        name = self._process(self._one(line, "pause"), "pause", free=True)
        return self._apply(Pause(name), f"  (resume {name} or heal continues it)")

    def resume(self, line: str) -> str:
        name = self._process(self._one(line, "resume"), "resume")
        paused = self._outstanding(Pause, name)
        if paused is None:
            raise FaultCommandError(f"{name} is not paused (pause {name} first)")
        return self._revert(paused)

    def faults(self, line: str = "") -> str:
        self._no_args(line, "faults")
        out = [f"#{fid}: {op.fault.describe()}{'' if op.ok else '  (apply failed: ' + str(op.error) + ')'}\n"
               for fid, op in self.nemesis.outstanding.items()] or ["no outstanding faults\n"]
        procs = sorted(self.processes())
        none = "no mesh" if self.no_processes == NO_PROCESSES else "the mesh names none"
        out.append(f"processes: {', '.join(procs)}\n" if procs else f"processes: none ({none})\n")
        return "".join(out)

    def close(self, line: str = "") -> str:
        """Heal what is outstanding (end of session). Raises FaultCommandError if that fails."""
        if not self.nemesis.outstanding:
            return ""
        return "".join(f"*** at exit: {line}" for line in self.heal().splitlines(keepends=True))


    # --- link commands (arguments parsed by testbed.cli.shell) -----------------------------------

    def link_set(self, a: str, b: str, params: dict[str, str], direction: str | None = None) -> str:
        self._link(a, b)
        head = self._apply(LinkChange(a, b, params, direction))
        ab, ba = self.nemesis.target.shapes(a, b)
        return f"{head}{a}->{b}: {ab.describe()}\n{b}->{a}: {ba.describe()}\n"

    def link_down(self, a: str, b: str) -> str:
        self._link(a, b)
        if self._link_down(a, b) is not None:
            raise FaultCommandError(f"link {a}-{b} is already down (link-up {a} {b} first)")
        return self._apply(LinkDown(a, b), f"  (link-up {a} {b} or heal brings it up)")

    def link_up(self, a: str, b: str) -> str:
        self._link(a, b)
        fid = self._link_down(a, b)
        if fid is None:
            raise FaultCommandError(f"link {a}-{b} is not down (link-down {a} {b} first)")
        return self._revert(fid)

    def drop(self, a: str, b: str, oneway: bool = False) -> str:
        self._hosts(a, b)
        if a == b:
            raise FaultCommandError(f"drop needs two different hosts, got {a} twice")
        both = "" if oneway else f" and {b} -> {a}"
        return self._apply(Cut(a, b) if oneway else Partition(complete([[a], [b]])),
                           f"  (dropping {a} -> {b}{both}; restore or heal lifts it)")

    def restore(self, a: str | None = None, b: str | None = None) -> str:
        """Revert the drops and partitions all of whose one-way cuts are between ``a`` and
        ``b`` (with ``a`` only: involve ``a``; neither: every one)."""
        self._hosts(*(h for h in (a, b) if h is not None))
        wanted = {h for h in (a, b) if h is not None}

        def mine(pair: tuple[str, str]) -> bool:
            return set(pair) == wanted if b is not None else (a is None or a in pair)
        blocks = [(fid, op.fault.pairs()) for fid, op in self.nemesis.outstanding.items()
                  if hasattr(op.fault, "pairs")]
        chosen = [fid for fid, pairs in blocks if all(mine(p) for p in pairs)]
        partly = [fid for fid, pairs in blocks if fid not in chosen and any(mine(p) for p in pairs)]
        removed, out = 0, []
        for fid in reversed(chosen):
            out.append(self._revert(fid))
            removed += len(self.nemesis.ops[-1].actions)
        out.append(f"removed {removed} drop rule{'s' if removed != 1 else ''}\n")
        out += [f"#{fid} ({self.nemesis.outstanding[fid].fault.describe()}) also cuts other hosts: "
                f"still in force (heal reverts it)\n" for fid in partly]
        return "".join(out)

    # --- helpers ----------------------------------------------------------------------------

    def _apply(self, fault: Fault, note: str = "") -> str:
        op = self.nemesis.apply(fault)
        if not op.ok:
            kept = " (still listed: heal reverts what was done)" if not fault.instant else ""
            raise FaultCommandError(f"{fault.describe()} failed: {op.error}{kept}")
        fid = max(self.nemesis.outstanding, default=None) if not fault.instant else None
        return f"{'#' + str(fid) + ': ' if fid is not None else ''}{fault.describe()}{note}\n"

    def _revert(self, fid: int) -> str:
        op = self.nemesis.revert(fid)
        if not op.ok:
            raise FaultCommandError(f"undo {op.fault.describe()} failed: {op.error}")
        return f"healed #{fid}: {op.fault.describe()} ({', '.join(op.actions) or 'nothing to do'})\n"

    def _outstanding(self, kind: type[Crash] | type[Pause], name: str) -> int | None:
        for fid, op in self.nemesis.outstanding.items():
            if isinstance(op.fault, kind) and op.fault.process == name:
                return fid
        return None

    def _process(self, name: str, command: str, free: bool = False) -> str:
        procs = sorted(self.processes())
        if not procs:
            raise FaultCommandError(self.no_processes)
        if name not in procs:
            raise FaultCommandError(f"{command}: no process {name!r}; processes: {', '.join(procs)}")
        if free:
            for kind, state, undo in ((Crash, "crashed", "restart"), (Pause, "paused", "resume")):
                if self._outstanding(kind, name) is not None:
                    raise FaultCommandError(f"{name} is already {state}: {undo} {name} first")
        return name

    def _link(self, a: str, b: str) -> None:
        """A typo is a usage error, not a fault op: the link must exist before one is recorded."""
        try:
            self.nemesis.target.shapes(a, b)
        except (ValueError, KeyError) as e:     # ControlError (a testbed), TargetError (a fake)
            raise FaultCommandError(e.args[0] if isinstance(e, KeyError) else str(e)) from None

    def _link_down(self, a: str, b: str) -> int | None:
        for fid, op in self.nemesis.outstanding.items():
            if isinstance(op.fault, LinkDown) and {op.fault.a, op.fault.b} == {a, b}:
                return fid
        return None

    def _hosts(self, *names: str) -> None:
        known = sorted(self.hosts())
        for n in names:
            if n not in known:
                raise FaultCommandError(f"no host {n!r}; hosts: {', '.join(known)}")

    @staticmethod
    def _one(line: str, command: str) -> str:
        words = line.split()
        if len(words) != 1:
            raise FaultCommandError(f"usage: {command} NAME")
        return words[0]

    @staticmethod
    def _no_args(line: str, command: str) -> None:
        if line.strip():
            raise FaultCommandError(f"usage: {command}  (no arguments)")


def session_for(testbed: RunningTestbed, mesh: Any, clock: Any = None, history: Any = None) -> FaultSession:
    """The session for ``minimesh up``: the mesh's fault target (its processes) when there is
    a mesh, else a TestbedTarget with no processes (partitions only). Ops are recorded in
    ``history`` (if given) on ``clock`` (default: a RunClock started now)."""
    target = mesh.fault_target() if mesh is not None else TestbedTarget(testbed)
    return FaultSession(target, clock or RunClock(), lambda: testbed.host_names, lambda: target.processes,
                        no_processes=NO_PROCESSES if mesh is None else NO_MESH_PROCESSES, history=history)


class FaultCommands:
    """Mininet CLI mixin: ``do_partition`` ... ``do_faults``. The class using it sets
    ``self.faults_session`` (a FaultSession) and ``self.errors`` (a failed-command count)."""

    faults_session: FaultSession
    errors: int

    def _fault(self, method: str, line: str) -> None:
        from mininet.log import error, output   # late: Mininet (the sessions above are tested without it)
        try:
            output(getattr(self.faults_session, method)(line))
        except (FaultCommandError, FaultError, TargetError) as e:
            self.errors += 1
            error(f"*** {e}\n")

    def do_partition(self, line: str) -> None:
        """Partition hosts. Usage: partition H1,H2 H3,H4 ... (groups that cannot talk) |
        partition isolate HOST | partition halves|ring|bridge|isolate-one [SEED]"""
        self._fault("partition", line)

    def do_heal(self, line: str) -> None:
        """Revert every outstanding fault (partitions, crashes, pauses). Usage: heal"""
        self._fault("heal", line)

    def do_crash(self, line: str) -> None:
        """Signal a mesh process (default SIGKILL). Usage: crash NAME [SIGNAL]; see faults"""
        self._fault("crash", line)

    def do_restart(self, line: str) -> None:
        """Restart a mesh process (ends its crash). Usage: restart NAME"""
        self._fault("restart", line)

    def do_pause(self, line: str) -> None:
        """Freeze a mesh process (SIGSTOP). Usage: pause NAME"""
        self._fault("pause", line)

    def do_resume(self, line: str) -> None:
        """Continue a paused process (SIGCONT). Usage: resume NAME"""
        self._fault("resume", line)

    def do_faults(self, line: str) -> None:
        """List outstanding faults and the processes that can be named. Usage: faults"""
        self._fault("faults", line)

    def close_faults(self) -> None:
        """End of session: heal what is outstanding; a failure counts as a failed command."""
        self._fault("close", "")
