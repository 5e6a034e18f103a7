"""Faults as immutable values, applied and reverted through a small target protocol.

A fault is a frozen dataclass registered by name (Toxiproxy's toxics): ``link`` (shape
change), ``link-down``, ``partition`` (a grudge, see :mod:`testbed.faults.grudge`),
``cut`` (one-way), ``crash`` (a signal; healed by a restart), ``restart``, ``pause``
(SIGSTOP; healed by SIGCONT). ``fault.apply(target)`` and ``fault.revert(target, op)``
return an :class:`Op` recording what was actually done (Jepsen's nemesis returns the op);
target errors do not escape: they end up in ``op.error`` with ``op.ok == False`` and the
actions done before the error, so a caller can record the op and still heal. Call
``op.raise_for_error()`` when failing is what you want.

The target is anything implementing :class:`~testbed.faults.base.NemesisTarget`:
:class:`~testbed.faults.targets.TestbedTarget` adapts a running network,
:class:`~testbed.faults.targets.FakeTarget` is an in-memory one for tests.
Grudges: :mod:`testbed.faults.grudge`; schedules and the runner: :mod:`testbed.faults.schedule`;
YAML schedules: :mod:`testbed.faults.source`. Reference: docs/faults.md.
"""
from __future__ import annotations

import functools
import signal as _signal
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from testbed.faults.base import (Fault, FaultError, NemesisTarget, Op, Step, _name, _perform,
                                 register)
from testbed.faults.grudge import Grudge
from testbed.shape import SHAPE_FIELDS, LinkShape, ShapeError, link_directions, parse_params

__all__ = ["LinkChange", "LinkDown", "Blocks", "Partition", "Cut", "Crash", "Restart", "Pause",
           "shape_params", "parse_signal"]


# --- link faults ------------------------------------------------------------------------

def shape_params(shape: LinkShape) -> dict[str, Any]:
    """A LinkShape as set_link parameters (bare numbers in the parameters' base units)."""
    return {name: getattr(shape, attr) for name, (attr, _) in SHAPE_FIELDS.items()}


@register
@dataclass(frozen=True)
class LinkChange(Fault):
    """Change a link's shape (``params`` as in topology YAML: delay="100ms", loss="1%").
    ``direction``: None for both directions, or ``"a->b"``. Revert restores the full
    shape each changed direction had before."""

    kind: ClassVar[str] = "link"
    a: str
    b: str
    params: Any = ()                 # Mapping or tuple of (name, value); stored sorted
    direction: str | None = None

    def __post_init__(self) -> None:
        _name(self.a, "a"), _name(self.b, "b")
        items = self.params.items() if isinstance(self.params, Mapping) else self.params
        params = tuple(sorted((str(k), v) for k, v in items))
        if not params:
            raise FaultError("a link fault needs at least one parameter; allowed: "
                             + ", ".join(SHAPE_FIELDS), "params")
        try:
            parse_params(dict(params))
        except ShapeError as e:
            raise FaultError(e.message, e.field) from None
        try:
            link_directions(self.direction, self.a, self.b)
        except ShapeError:
            raise FaultError(f"use {self.a}->{self.b} or {self.b}->{self.a} (or omit for both)", "direction") from None
        object.__setattr__(self, "params", params)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "Fault":
        f = dict(fields)
        allowed = ["a", "b", "direction", *SHAPE_FIELDS]
        for k in f:
            if k not in allowed and k != "params":
                raise FaultError(f"unknown field for a link fault; allowed: {', '.join(allowed)}", k)
        params = dict(f.pop("params", None) or {})
        params.update({k: f.pop(k) for k in list(f) if k in SHAPE_FIELDS})
        return super().from_fields({**f, "params": params})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a, "b": self.b, "direction": self.direction, **dict(self.params)}

    def describe(self) -> str:
        p = " ".join(f"{k}={v}" for k, v in self.params)
        return f"link {self.a}-{self.b}{' ' + self.direction if self.direction else ''} {p}"

    def apply(self, target: NemesisTarget) -> Op:
        try:
            ab, ba = target.shapes(self.a, self.b)
        except Exception as e:
            return Op(self, "apply", ok=False, error=f"read shapes {self.a}-{self.b}: {e}")
        state = {"before": [ab.to_dict(), ba.to_dict()]}
        params = dict(self.params)
        return _perform(self, "apply", [(self.describe(),
                                         lambda: target.set_link(self.a, self.b, self.direction, **params))], state)

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        if applied is None or "before" not in applied.state:
            return Op(self, "revert", ok=False, error="revert needs the op returned by apply (the shapes before)")
        before = [LinkShape(**d) for d in applied.state["before"]]
        steps: list[Step] = []
        changed_dirs = link_directions(self.direction, self.a, self.b)
        for changed, (src, dst), shape in zip(changed_dirs, ((self.a, self.b), (self.b, self.a)), before,
                                              strict=True):
            if changed:
                d = f"{src}->{dst}"
                p = shape_params(shape)
                steps.append((f"link {self.a}-{self.b} {d} back to {shape.describe()}",
                              functools.partial(target.set_link, self.a, self.b, d, **p)))
        return _perform(self, "revert", steps, applied.state)


@register
@dataclass(frozen=True)
class LinkDown(Fault):
    """Administratively take a link down (both ends); revert brings it up."""

    kind: ClassVar[str] = "link-down"
    a: str
    b: str

    def __post_init__(self) -> None:
        _name(self.a, "a"), _name(self.b, "b")

    def describe(self) -> str:
        return f"link-down {self.a}-{self.b}"

    def apply(self, target: NemesisTarget) -> Op:
        return _perform(self, "apply", [(f"link_down {self.a}-{self.b}", lambda: target.link_down(self.a, self.b))])

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        return _perform(self, "revert", [(f"link_up {self.a}-{self.b}", lambda: target.link_up(self.a, self.b))])


# --- partitions -------------------------------------------------------------------------

class Blocks(Fault):
    """Faults made of one-way drops ``(src, dst)``."""

    def pairs(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def apply(self, target: NemesisTarget) -> Op:
        return _perform(self, "apply", [(f"block {s}->{d}", functools.partial(target.block, s, d, oneway=True))
                                        for s, d in self.pairs()])

    def revert(self, target: NemesisTarget, applied: Op | None = None,
               keep: frozenset[tuple[str, str]] = frozenset()) -> Op:
        """Unblock every pair except those in ``keep`` (still wanted by another fault)."""
        return _perform(self, "revert", [(f"unblock {s}->{d}", functools.partial(target.unblock, s, d, oneway=True))
                                         for s, d in self.pairs() if (s, d) not in keep])


@register
@dataclass(frozen=True)
class Partition(Blocks):
    """A partition described by a grudge: node -> nodes it drops traffic from."""

    kind: ClassVar[str] = "partition"
    grudge: Any                        # Grudge, or any Mapping[str, Iterable[str]]

    def __post_init__(self) -> None:
        g = self.grudge
        if not isinstance(g, Grudge):
            if not isinstance(g, Mapping):
                raise FaultError(f"expected a mapping node -> nodes it drops traffic from, got {g!r}", "grudge")
            try:
                g = Grudge.of({k: [v] if isinstance(v, str) else v for k, v in g.items()})
            except ValueError as e:
                raise FaultError(str(e), "grudge") from None
        if not g:
            raise FaultError("the grudge is empty: nothing would be cut", "grudge")
        object.__setattr__(self, "grudge", g)

    def pairs(self) -> list[tuple[str, str]]:
        return self.grudge.pairs()

    def describe(self) -> str:
        return f"partition ({self.grudge.describe()})"


@register
@dataclass(frozen=True)
class Cut(Blocks):
    """One-way cut: traffic from ``src`` to ``dst`` is dropped; dst -> src still flows."""

    kind: ClassVar[str] = "cut"
    src: str
    dst: str

    def __post_init__(self) -> None:
        _name(self.src, "src"), _name(self.dst, "dst")
        if self.src == self.dst:
            raise FaultError(f"src and dst are both {self.src!r}", "dst")

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.src, self.dst)]

    def describe(self) -> str:
        return f"cut {self.src}->{self.dst}"


# --- processes --------------------------------------------------------------------------

def parse_signal(value: Any, field_name: str = "signal") -> _signal.Signals:
    """'SIGKILL', 'KILL', 'kill' or 9 -> signal.SIGKILL."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return _signal.Signals(value)
        name = str(value).upper()
        return _signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise FaultError(f"unknown signal {value!r}; e.g. SIGKILL, SIGTERM, SIGINT", field_name) from None


@register
@dataclass(frozen=True)
class Crash(Fault):
    """Send ``signal`` (default SIGKILL) to a named process; revert restarts it (unless
    ``restart_on_heal`` is false, for a crash that must stay)."""

    kind: ClassVar[str] = "crash"
    process: str
    signal: str = "SIGKILL"
    restart_on_heal: bool = True

    def __post_init__(self) -> None:
        _name(self.process, "process")
        object.__setattr__(self, "signal", parse_signal(self.signal).name)

    def describe(self) -> str:
        return f"crash {self.process} ({self.signal})"

    def apply(self, target: NemesisTarget) -> Op:
        sig = parse_signal(self.signal)
        return _perform(self, "apply", [(f"{sig.name} {self.process}", lambda: target.signal(self.process, sig))])

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        steps: list[Step] = [(f"restart {self.process}", lambda: target.restart(self.process))]
        return _perform(self, "revert", steps if self.restart_on_heal else [])


@register
@dataclass(frozen=True)
class Restart(Fault):
    """Restart a named process (instantaneous: nothing to revert)."""

    kind: ClassVar[str] = "restart"
    instant: ClassVar[bool] = True
    process: str

    def __post_init__(self) -> None:
        _name(self.process, "process")

    def describe(self) -> str:
        return f"restart {self.process}"

    def apply(self, target: NemesisTarget) -> Op:
        return _perform(self, "apply", [(f"restart {self.process}", lambda: target.restart(self.process))])

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        return Op(self, "revert")


@register
@dataclass(frozen=True)
class Pause(Fault):
    """Freeze a named process (SIGSTOP); revert resumes it (SIGCONT)."""

    kind: ClassVar[str] = "pause"
    process: str

    def __post_init__(self) -> None:
        _name(self.process, "process")

    def describe(self) -> str:
        return f"pause {self.process}"

    def apply(self, target: NemesisTarget) -> Op:
        return _perform(self, "apply", [(f"SIGSTOP {self.process}",
                                         lambda: target.signal(self.process, _signal.SIGSTOP))])

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        return _perform(self, "revert", [(f"SIGCONT {self.process}",
                                          lambda: target.signal(self.process, _signal.SIGCONT))])
