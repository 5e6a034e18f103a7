"""The fault machinery every fault kind shares: the target protocol, the op a fault
returns, the base class and the registry by name. Fault kinds are in :mod:`testbed.faults.kinds`."""
from __future__ import annotations

import dataclasses
import signal as _signal
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol, runtime_checkable

from testbed.faults.grudge import Grudge
from testbed.shape import LinkShape

__all__ = ["NemesisTarget", "Op", "Fault", "FaultError", "FAULTS", "register", "fault_from_dict"]


class FaultError(ValueError):
    """A fault value is malformed, or applying/reverting one failed (``op`` then holds the
    record of what was done)."""

    def __init__(self, message: str, field: str | None = None, op: "Op | None" = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.op = field, message, op


@runtime_checkable
class NemesisTarget(Protocol):
    """What a fault needs from the network. Host/process names are the topology's."""

    def shapes(self, a: str, b: str) -> tuple[LinkShape, LinkShape]: ...          # (a->b, b->a)
    def set_link(self, a: str, b: str, direction: str | None = None, **params: Any) -> Any: ...
    def link_down(self, a: str, b: str) -> None: ...
    def link_up(self, a: str, b: str) -> None: ...
    def block(self, src: str, dst: str, oneway: bool = False) -> None: ...        # drop src->dst
    def unblock(self, src: str, dst: str, oneway: bool = False) -> None: ...
    def signal(self, process: str, sig: _signal.Signals) -> None: ...
    def restart(self, process: str) -> None: ...


@dataclass(frozen=True)
class Op:
    """What applying or reverting a fault did. ``actions``: the target calls that succeeded,
    in order; ``state``: what revert needs (e.g. the link shapes before a change)."""

    fault: "Fault"
    phase: str                                   # "apply" | "revert"
    actions: tuple[str, ...] = ()
    ok: bool = True
    error: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)

    def raise_for_error(self) -> "Op":
        if not self.ok:
            raise FaultError(f"{self.phase} {self.fault.describe()} failed: {self.error}", op=self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "fault": self.fault.to_dict(), "actions": list(self.actions),
                "ok": self.ok, "error": self.error, "state": dict(self.state)}


Step = tuple[str, Callable[[], Any]]


def _perform(fault: "Fault", phase: str, steps: Iterable[Step], state: Mapping[str, Any] | None = None) -> Op:
    done: list[str] = []
    for label, call in steps:
        try:
            call()
        except Exception as e:  # recorded in the op: the runner records it and heals
            return Op(fault, phase, tuple(done), ok=False, error=f"{label}: {e}", state=state or {})
        done.append(label)
    return Op(fault, phase, tuple(done), state=state or {})


FAULTS: dict[str, type["Fault"]] = {}


def register(cls: type["Fault"]) -> type["Fault"]:
    if cls.kind in FAULTS:
        raise ValueError(f"fault kind {cls.kind!r} registered twice")
    FAULTS[cls.kind] = cls
    return cls


class Fault:
    """Base of all faults. Subclasses are frozen dataclasses with a ``kind``."""

    kind: ClassVar[str] = ""
    instant: ClassVar[bool] = False   # nothing to revert (e.g. restart)
    # declared, not set: each subclass's @dataclass sets it (and for mypy, a Fault is a dataclass)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def apply(self, target: NemesisTarget) -> Op:
        raise NotImplementedError

    def revert(self, target: NemesisTarget, applied: Op | None = None) -> Op:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Grudge) else v
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "Fault":
        names = [f.name for f in dataclasses.fields(cls)]
        for k in fields:
            if k not in names:
                raise FaultError(f"unknown field for a {cls.kind} fault; allowed: {', '.join(names)}", k)
        try:
            return cls(**fields)
        except TypeError as e:
            missing = [n for f in dataclasses.fields(cls) if (n := f.name) not in fields
                       and f.default is dataclasses.MISSING]
            raise FaultError(f"a {cls.kind} fault needs: {', '.join(missing) or e}", "kind") from None


def fault_from_dict(d: Mapping[str, Any]) -> Fault:
    """``{"kind": "partition", ...}`` -> the fault value (inverse of ``to_dict``)."""
    kind = d.get("kind")
    if kind not in FAULTS:
        raise FaultError(f"unknown fault kind {kind!r}; kinds: {', '.join(FAULTS)}", "kind")
    return FAULTS[kind].from_fields({k: v for k, v in d.items() if k != "kind"})


def _name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value:
        raise FaultError(f"expected a name, got {value!r}", field_name)
    return value
