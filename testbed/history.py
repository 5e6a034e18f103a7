"""One append-only history per run: ``history.jsonl``, one JSON object per line.

Record types (``"type"`` field), all times in seconds on the run's clock (:class:`RunClock`,
shared by the workload and the fault schedule):

- ``request``: one workload request (start/end, status, instance, version, retries,
  Envoy response flags, error);
- ``fault``: one fault operation (apply or revert), with what actually happened;
- ``event``: a control-plane or registry event (leader change, config push, ejection,
  endpoint added/removed, ...);
- ``etcd``: one etcd client operation event for linearizability checking, Jepsen style:
  an ``invoke`` and later its completion ``ok`` / ``fail`` (definitely not applied) /
  ``info`` (unknown outcome) from the same ``process``.

The writer flushes each line as it is written, under a lock (threads) and without awaiting
(asyncio tasks cannot interleave within a line): a killed run keeps every line it wrote. The
reader tolerates a truncated last line (the run died mid-write) and reports it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, ClassVar, Iterable, Mapping, TypeVar, Union

from testbed.paths import hand_over

__all__ = ["Request", "FaultRecord", "Event", "EtcdOp", "Record", "History", "HistoryData",
           "HistoryError", "read_history", "RunClock", "FakeClock", "fault_windows", "jsonable"]


class HistoryError(ValueError):
    """A history file is malformed; ``str(e)`` is ``file:line: message``."""


@dataclass(frozen=True)
class Request:
    """One request. ``status`` is None when no HTTP response arrived (then ``error`` says
    why). ``flags``: Envoy response flags (e.g. "UF,URX"), "" when none."""

    type: ClassVar[str] = "request"
    t_start: float
    t_end: float
    status: int | None = None
    instance: str = ""
    version: str = ""
    retries: int = 0
    flags: str = ""
    error: str | None = None
    client: str = ""
    service: str = ""
    id: int | None = None

    @property
    def ok(self) -> bool:
        """Success: a response with status 200..399 and no error."""
        return self.error is None and self.status is not None and 200 <= self.status < 400

    @property
    def latency_s(self) -> float:
        return self.t_end - self.t_start


@dataclass(frozen=True)
class FaultRecord:
    """One fault operation. ``fault_id`` pairs an apply with its revert."""

    type: ClassVar[str] = "fault"
    t_start: float
    t_end: float
    fault_id: int
    phase: str                          # "apply" | "revert"
    fault: Mapping[str, Any]            # Fault.to_dict()
    actions: tuple[str, ...] = ()
    ok: bool = True
    error: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Event:
    """A control-plane/registry event: ``source`` (pilot, registry, etcd, sidecar:h1, ...),
    ``kind`` (leader_change, config_push, ejection, endpoint_removed, endpoint_added, ...)."""

    type: ClassVar[str] = "event"
    t: float
    source: str
    kind: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EtcdOp:
    """An etcd operation event. ``op_type``: invoke | ok | fail | info. ``f``: read | write
    | cas. ``value``: written value (write), [expected, new] (cas), value read (read ok;
    None for a missing key). ``serializable``: the read was served by any member."""

    type: ClassVar[str] = "etcd"
    t: float
    process: int | str
    op_type: str
    f: str
    key: str
    value: Any = None
    serializable: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        if self.op_type not in ("invoke", "ok", "fail", "info"):
            raise HistoryError(f"etcd op_type {self.op_type!r}: allowed invoke, ok, fail, info")
        if self.f not in ("read", "write", "cas"):
            raise HistoryError(f"etcd f {self.f!r}: allowed read, write, cas")


Record = Union[Request, FaultRecord, Event, EtcdOp]
_R = TypeVar("_R", Request, FaultRecord, Event, EtcdOp)
_TYPES: dict[str, type] = {c.type: c for c in (Request, FaultRecord, Event, EtcdOp)}


def jsonable(x: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, tuples/sets as lists, inf/nan as None."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        out = {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
        t = getattr(type(x), "type", None)
        return {"type": t, **out} if isinstance(t, str) else out
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in x]
        return sorted(items, key=repr) if isinstance(x, (set, frozenset)) else items
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "to_dict"):
        return jsonable(x.to_dict())
    return x


def _marked_indeterminate(e: BaseException) -> bool:
    """The default of ``etcd_call``: the error marks its outcome unknown (``EtcdError.indeterminate``)."""
    return bool(getattr(e, "indeterminate", False))


class History:
    """Append-only writer. Use as a context manager, or call ``close()``."""

    def __init__(self, path: str | Path | None = None, clock: Any = None, stream: IO[str] | None = None):
        self.path: Path | None
        self._file: IO[str]
        if path is not None and stream is None:
            self.path = Path(path)
            self._file = open(self.path, "a", encoding="utf-8")
            hand_over(self.path)        # the sudo user's, readable
        elif stream is not None and path is None:
            self.path, self._file = None, stream
        else:
            raise ValueError("History needs a path or a stream (one of them)")
        self.clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Record], None]] = []
        self.count = 0

    def subscribe(self, listener: Callable[[Record], None]) -> Callable[[], None]:
        """Call ``listener(record)`` after each append (keep it quick: it runs in the
        writer's thread, in order). Returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def now(self) -> float:
        if self.clock is None:
            raise ValueError("History has no clock: pass clock= or give times explicitly")
        return self.clock.now()

    def append(self, record: _R) -> _R:
        line = json.dumps(jsonable(record), allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            self.count += 1
            for listener in list(self._listeners):
                listener(record)
        return record

    def request(self, **fields: Any) -> Request:
        return self.append(Request(**fields))

    def fault(self, **fields: Any) -> FaultRecord:
        return self.append(FaultRecord(**fields))

    def event(self, source: str, kind: str, t: float | None = None, **details: Any) -> Event:
        return self.append(Event(self.now() if t is None else t, source, kind, details))

    def etcd(self, process: int | str, op_type: str, f: str, key: str, value: Any = None,
             t: float | None = None, **extra: Any) -> EtcdOp:
        return self.append(EtcdOp(self.now() if t is None else t, process, op_type, f, key, value,
                                  **extra))

    def import_events(self, source: str, path: "os.PathLike[str] | str", wall0: float, **extra: Any) -> int:
        """Append the JSON-lines events of another component's log (Pilot's events file:
        ``{"t": wall-clock, "event": kind, ...}``) as ``event`` records of ``source``, run time
        = wall-clock - ``wall0`` (records without a wall-clock time get now), ``extra`` added
        to each; unreadable lines are skipped. Returns how many were imported."""
        n = 0
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except FileNotFoundError:
            return 0
        for line in lines:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if not isinstance(d, dict):
                continue
            kind = str(d.pop("event", d.pop("kind", "event")))
            wall = d.pop("t", None)
            t = wall - wall0 if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
            self.event(source, kind, t=t, **{**d, **extra})
            n += 1
        return n

    def event_hook(self, source: str) -> Callable[..., None]:
        """A callback recording events from ``source``, accepting both shapes in use:
        Pilot's ``on_event({"event": kind, "t": wall, ...})`` and the registry's
        ``on_event(kind, details)``. Times come from this history's clock (a wall-clock
        ``t`` is kept as ``details["wall_t"]``)."""
        def hook(kind: str | Mapping[str, Any], details: Mapping[str, Any] | None = None) -> None:
            if isinstance(kind, Mapping):
                d = dict(kind)
                name = str(d.pop("event", d.pop("kind", "event")))
                if "t" in d:
                    d["wall_t"] = d.pop("t")
                self.event(source, name, **d)
            else:
                self.event(source, kind, **dict(details or {}))
        return hook

    async def etcd_call(self, process: int | str, f: str, key: str, value: Any, call: Callable[[], Awaitable[Any]],
                        *, serializable: bool = False,
                        indeterminate: Callable[[BaseException], bool] = _marked_indeterminate) -> Any:
        """Record ``invoke``, await ``call()``, record its completion; returns the result or
        re-raises. Completion: a read is ``ok`` with the value returned; a write ``ok``;
        a cas ``ok`` when ``call()`` returned true, ``fail`` when false (compare failed);
        an exception is ``info`` when ``indeterminate(e)`` (may have been applied) and
        ``fail`` otherwise (definitely not applied)."""
        self.etcd(process, "invoke", f, key, value, serializable=serializable)
        try:
            result = await call()
        except BaseException as e:
            maybe = isinstance(e, asyncio.CancelledError) or indeterminate(e)
            kind = "info" if maybe else "fail"
            self.etcd(process, kind, f, key, None if f == "read" else value, serializable=serializable,
                      error=f"{type(e).__name__}: {e}")
            raise
        if f == "read":
            self.etcd(process, "ok", f, key, result, serializable=serializable)
        else:
            self.etcd(process, "ok" if (f == "write" or result) else "fail", f, key, value, serializable=serializable)
        return result

    def close(self) -> None:
        with self._lock:
            if self.path is not None and not self._file.closed:
                self._file.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class HistoryData:
    records: tuple[Record, ...]
    truncated: bool = False           # the last line was cut short (the run was killed)

    def _of(self, cls: type) -> list:
        return [r for r in self.records if isinstance(r, cls)]

    @property
    def requests(self) -> list[Request]:
        return self._of(Request)

    @property
    def faults(self) -> list[FaultRecord]:
        return self._of(FaultRecord)

    @property
    def events(self) -> list[Event]:
        return self._of(Event)

    @property
    def etcd(self) -> list[EtcdOp]:
        return self._of(EtcdOp)


def _record(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict) or obj.get("type") not in _TYPES:
        raise HistoryError(f"{where}: expected an object with type one of {', '.join(_TYPES)}")
    cls = _TYPES[obj["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(obj) - names - {"type"}
    if unknown:
        raise HistoryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} for {obj['type']}")
    data = {k: v for k, v in obj.items() if k != "type"}
    if "actions" in data:
        data["actions"] = tuple(data["actions"])
    try:
        return cls(**data)
    except TypeError as e:
        raise HistoryError(f"{where}: {obj['type']}: {e}") from None
    except HistoryError as e:
        raise HistoryError(f"{where}: {e}") from None


def read_history(path: str | Path) -> HistoryData:
    """Load a history.jsonl into typed records. A malformed line raises HistoryError with
    ``file:line``, except a last line without its newline (a run killed mid-write)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[Record] = []
    truncated = False
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):          # no newline after it: cut short
                truncated = True
                break
            raise HistoryError(f"{path}:{i}: not JSON: {e.msg}") from None
        records.append(_record(obj, f"{path}:{i}"))
    return HistoryData(tuple(records), truncated)


def fault_windows(faults: Iterable[FaultRecord]) -> list[tuple[float, float | None, str]]:
    """(start, end, description) per applied fault: from the apply's start to the revert's
    end (None while never reverted). Instant faults give start == end."""
    applied: dict[int, FaultRecord] = {}
    out: list[tuple[float, float | None, str]] = []
    ended: dict[int, float] = {}
    for r in sorted(faults, key=lambda r: r.t_start):
        if r.phase == "apply":
            applied[r.fault_id] = r
        elif r.phase == "revert":
            ended[r.fault_id] = r.t_end
    for fid, r in applied.items():
        desc = r.description or str(r.fault.get("kind", "fault"))
        out.append((r.t_start, ended.get(fid), desc))
    return sorted(out, key=lambda w: w[0])


# --- clocks -----------------------------------------------------------------------------

class RunClock:
    """Seconds since the run started (monotonic). ``wall0``: wall-clock time at start."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.wall0 = time.time()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep_until(self, t: float, stop: threading.Event | None = None) -> bool:
        """Sleep until ``now() >= t``; False if ``stop`` was set first."""
        while True:
            left = t - self.now()
            if stop is not None and stop.is_set():
                return False
            if left <= 0:
                return True
            if stop is not None:
                if stop.wait(left):
                    return False
            else:
                time.sleep(left)


class FakeClock:
    """A clock for tests: ``sleep_until`` jumps, ``advance`` moves time by hand."""

    def __init__(self, t: float = 0.0):
        self.t = t
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt

    def sleep_until(self, t: float, stop: threading.Event | None = None) -> bool:
        if stop is not None and stop.is_set():
            return False
        self.sleeps.append(t)
        self.t = max(self.t, t)
        return True
