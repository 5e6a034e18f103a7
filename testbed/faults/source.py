"""Fault schedules from YAML, with ``file:line`` errors (docs/faults.md has the reference).

    seed: 7                 # default seed (--seed overrides)
    duration: 60s           # run length: everything is healed at this time
    roles: {registry: [e1, e2, e3], sidecars: [h1, h2], control: [cp]}
    steps:
      - at: 10s
        for: 5s
        fault: {kind: link, a: h1, b: s1, delay: 100ms, loss: 1%}
      - every: 20s
        start: 5s
        for: 5s
        fault: {kind: partition, grudge: random-halves, role: registry}
      - flip-flop: 5s       # on 5 s, off 5 s (or off: 10s)
        fault: {kind: mesh-cut, cut: control-plane}

Times need a unit (``500ms``, ``10s``). Random grudges are drawn per occurrence from one
``random.Random(seed)``, in file order, so a seed fixes the whole schedule. A ``kind`` is any
registered fault kind: those of :mod:`testbed.faults.kinds`, and the identity faults once
:mod:`testbed.mesh.citadel.faults` is imported.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from yaml.nodes import Node, ScalarNode

from testbed.faults.base import FAULTS, Fault, FaultError, fault_from_dict
from testbed.faults.kinds import Partition
from testbed.faults.grudge import GRUDGE_BUILDERS, MESH_CUTS, GrudgeError, complete
from testbed.faults.schedule import FaultGen, Schedule, at, every, flip_flop
from testbed.shape import ShapeError, parse_time_ms
from testbed.topology.spec import TopologyError
from testbed.topology.reader import Context, compose

__all__ = ["ScheduleError", "LoadedSchedule", "load_schedule", "parse_schedule"]


class ScheduleError(ValueError):
    """``str(e)`` is ``file:line: message``."""

    def __init__(self, file: str, line: int | None, message: str):
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass(frozen=True)
class LoadedSchedule:
    schedule: Schedule
    seed: int
    duration_s: float | None
    roles: Mapping[str, tuple[str, ...]]


def load_schedule(path: str | Path, *, seed: int | None = None,
                  roles: Mapping[str, Iterable[str]] | None = None, nodes: Iterable[str] | None = None,
                  processes: Iterable[str] | None = None) -> LoadedSchedule:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScheduleError(str(path), None, f"cannot read: {e.strerror}") from None
    return parse_schedule(text, str(path), seed=seed, roles=roles, nodes=nodes, processes=processes)


def parse_schedule(text: str, file: str = "<schedule>", *, seed: int | None = None,
                   roles: Mapping[str, Iterable[str]] | None = None, nodes: Iterable[str] | None = None,
                   processes: Iterable[str] | None = None) -> LoadedSchedule:
    """Parse a schedule. ``seed`` (e.g. from --seed) overrides the file's; ``roles`` are
    merged under the file's ``roles:``. When given, ``nodes`` (the topology's hosts and
    switches) and ``processes`` (the experiment's process names) are the names faults may use."""
    try:
        return _Parser(file, nodes, processes).document(text, seed, roles or {})
    except TopologyError as e:
        raise ScheduleError(e.file, e.line, e.message) from None


_STEP_KEYS = ("at", "every", "flip-flop", "for", "start", "until", "off", "fault")


class _Parser:
    def __init__(self, file: str, nodes: Iterable[str] | None, processes: Iterable[str] | None):
        self.file = file
        self.ctx = Context(file)
        self.known = {"node": None if nodes is None else sorted(set(nodes)),
                      "process": None if processes is None else sorted(set(processes))}

    def check(self, names: Iterable[str], what: str, node: Node, where: str) -> None:
        known = self.known[what]
        if known is None:
            return
        for name in names:
            if name not in known:
                plural = {"node": "nodes", "process": "processes"}[what]
                self.ctx.error(node, f"{where}: unknown {what} {name!r}; {plural}: {', '.join(known)}")

    def check_fault(self, fault: Fault, node: Node, where: str) -> Fault:
        names = {f: getattr(fault, f) for f in ("a", "b", "src", "dst") if hasattr(fault, f)}
        self.check(names.values(), "node", node, where)
        if hasattr(fault, "grudge"):
            self.check(sorted(fault.grudge.nodes()), "node", node, where)
        if hasattr(fault, "process"):
            self.check([fault.process], "process", node, where)
        return fault

    def time_s(self, node: Node, where: str) -> float:
        value = self.ctx.scalar(node, where)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.ctx.error(node, f"{where}: give a unit, e.g. {value}s or {value}ms")
        try:
            return parse_time_ms(where, value) / 1000.0
        except ShapeError as e:
            self.ctx.error(node, e.message.replace("bad time", f"{where}: bad time"))

    def document(self, text: str, seed: int | None, roles: Mapping[str, Iterable[str]]) -> LoadedSchedule:
        root = compose(text, self.file)
        if root is None:
            raise ScheduleError(self.file, None, "empty schedule: expected a mapping with steps:")
        top = self.ctx.mapping(root, "schedule", allowed=("seed", "duration", "roles", "steps"),
                               required=("steps",), null_ok=False)
        file_seed = self.ctx.integer(top["seed"][1], "seed") if "seed" in top else 0
        duration = self.time_s(top["duration"][1], "duration") if "duration" in top else None
        self.roles = {k: tuple(sorted(set(v))) for k, v in roles.items()}
        if "roles" in top:
            for name, (_, vn) in self.ctx.mapping(top["roles"][1], "roles").items():
                self.roles[name] = tuple(sorted({self.ctx.text(h, f"roles.{name}", "a host name")
                                                 for h in self.ctx.sequence(vn, f"roles.{name}")}))
        used_seed = file_seed if seed is None else seed
        rng = random.Random(used_seed)
        sched = Schedule()
        for i, node in enumerate(self.ctx.sequence(top["steps"][1], "steps")):
            sched = sched + self.step(node, f"steps[{i}]", rng, duration)
        return LoadedSchedule(sched, used_seed, duration, self.roles)

    def step(self, node: Node, where: str, rng: random.Random, duration: float | None) -> Schedule:
        m = self.ctx.mapping(node, where, allowed=_STEP_KEYS, required=("fault",), null_ok=False)
        kinds = [k for k in ("at", "every", "flip-flop") if k in m]
        if len(kinds) != 1:
            self.ctx.error(node, f"{where}: give exactly one of at, every, flip-flop"
                           + (f" (got {', '.join(kinds)})" if kinds else ""))
        kind = kinds[0]
        t = {k: self.time_s(m[k][1], f"{where}.{k}") for k in m if k not in ("fault",)}
        source = f"{self.file}:{self.ctx.line(node)}"
        gen = self.fault(m["fault"][1], f"{where}.fault")
        try:
            if kind == "at":
                for bad in ("start", "until", "off"):
                    if bad in m:
                        self.ctx.error(m[bad][0], f"{where}: {bad} goes with every/flip-flop, not at")
                if duration is not None and t["at"] >= duration:
                    self.ctx.error(m["at"][1], f"{where}.at: {t['at']:g}s is not before the run's end "
                                   f"(duration: {duration:g}s)")
                return at(t["at"], gen, t.get("for"), rng=rng, source=source)
            until = t.get("until", duration)
            if until is None:
                self.ctx.error(node, f"{where}: {kind} needs until: (or a top-level duration:)")
            if kind == "every":
                if "for" not in t:
                    self.ctx.error(node, f"{where}: every needs for: (how long each occurrence lasts)")
                return every(t["every"], gen, t["for"], until_s=until, start_s=t.get("start", 0.0),
                             rng=rng, source=source)
            if "for" in t:
                self.ctx.error(m["for"][0], f"{where}: flip-flop's on time is its own value; use off: for the off time")
            return flip_flop(gen, t["flip-flop"], t.get("off"), until_s=until, start_s=t.get("start", 0.0),
                             rng=rng, source=source)
        except FaultError as e:
            key = e.field if e.field in m else kind
            self.ctx.error(m[key][0], f"{where}: {e.message}")

    def fault(self, node: Node, where: str) -> Fault | FaultGen:
        m = self.ctx.mapping(node, where, required=("kind",), null_ok=False)
        kind = self.ctx.text(m["kind"][1], f"{where}.kind", "a fault kind")
        known = [*FAULTS, "mesh-cut"]
        if kind not in known:
            self.ctx.error(m["kind"][1], f"{where}.kind: unknown fault kind {kind!r}; kinds: {', '.join(known)}")
        if kind == "mesh-cut":
            return self.mesh_cut(m, where, node)
        if kind == "partition":
            return self.partition(m, where, node)
        data = {k: self.ctx.value(v, f"{where}.{k}") for k, (_, v) in m.items()}
        return self.check_fault(self.build(lambda: fault_from_dict(data), m, node, where), node, where)

    def build(self, make: Any, m: Mapping[str, tuple[Node, Node]], node: Node, where: str) -> Any:
        try:
            return make()
        except (FaultError, GrudgeError) as e:
            field = getattr(e, "field", None)
            at_node = m[field][0] if field is not None and field in m else node
            self.ctx.error(at_node, f"{where}: {e}")

    def nodes(self, m: Mapping[str, tuple[Node, Node]], where: str, node: Node) -> tuple[str, ...]:
        if ("nodes" in m) == ("role" in m):
            self.ctx.error(node, f"{where}: give the hosts as nodes: [...] or role: NAME (one of them)")
        if "role" in m:
            role = self.ctx.text(m["role"][1], f"{where}.role", "a role name")
            if role not in self.roles:
                self.ctx.error(m["role"][1], f"{where}.role: unknown role {role!r}; roles: "
                               + (", ".join(sorted(self.roles)) or "none (add roles: at the top)"))
            return self.roles[role]
        return tuple(self.ctx.text(h, f"{where}.nodes", "a host name")
                     for h in self.ctx.sequence(m["nodes"][1], f"{where}.nodes"))

    def allowed(self, m: Mapping[str, tuple[Node, Node]], where: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = (), node: Node | None = None) -> None:
        for k, (kn, _) in m.items():
            if k not in allowed:
                self.ctx.error(kn, f"{where}: unknown field {k!r} here; allowed: {', '.join(allowed)}")
        for k in required:
            if k not in m:
                self.ctx.error(node, f"{where}: missing required field {k!r}")

    def partition(self, m: Mapping[str, tuple[Node, Node]], where: str, node: Node) -> Fault | FaultGen:
        names = ", ".join([*GRUDGE_BUILDERS, "complete"])
        if "grudge" not in m:
            self.ctx.error(node, f"{where}: a partition needs grudge: (one of {names}, or a mapping host -> hosts)")
        gnode = m["grudge"][1]
        if not isinstance(gnode, ScalarNode):
            self.allowed(m, where, ("kind", "grudge"))
            value = self.ctx.value(gnode, f"{where}.grudge")
            return self.check_fault(self.build(lambda: Partition(value), m, gnode, f"{where}.grudge"), gnode,
                                    f"{where}.grudge")
        name = self.ctx.text(gnode, f"{where}.grudge", "a grudge name")
        if name == "complete":
            self.allowed(m, where, ("kind", "grudge", "components"), ("components",), node)
            comps = [[self.ctx.text(h, f"{where}.components", "a host name")
                      for h in self.ctx.sequence(c, f"{where}.components")]
                     for c in self.ctx.sequence(m["components"][1], f"{where}.components")]
            return self.check_fault(self.build(lambda: Partition(complete(comps)), m, gnode, where),
                                    m["components"][1], f"{where}.components")
        if name not in GRUDGE_BUILDERS:
            self.ctx.error(gnode, f"{where}.grudge: unknown grudge {name!r}; grudges: {names}, "
                           "or a mapping host -> hosts")
        self.allowed(m, where, ("kind", "grudge", "nodes", "role"))
        hosts = self.nodes(m, where, gnode)
        self.check(hosts, "node", m["nodes"][1] if "nodes" in m else m["role"][1], where)
        builder = GRUDGE_BUILDERS[name]
        self.build(lambda: builder(hosts, random.Random(0)), m, gnode, where)   # validate now
        return lambda rng: Partition(builder(hosts, rng))

    def mesh_cut(self, m: Mapping[str, tuple[Node, Node]], where: str, node: Node) -> FaultGen:
        self.allowed(m, where, ("kind", "cut"), ("cut",), node)
        cut = self.ctx.text(m["cut"][1], f"{where}.cut", "a cut name")
        if cut not in MESH_CUTS:
            self.ctx.error(m["cut"][1], f"{where}.cut: unknown cut {cut!r}; cuts: {', '.join(MESH_CUTS)}")
        builder, roles = MESH_CUTS[cut], dict(self.roles)
        for role, hosts in roles.items():
            self.check(hosts, "node", m["cut"][1], f"{where} (role {role})")
        self.build(lambda: builder(roles, random.Random(0)), {}, m["cut"][1], where)   # validate now
        return lambda rng: Partition(builder(roles, rng))
