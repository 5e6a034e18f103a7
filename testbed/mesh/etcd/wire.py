"""What etcd says, as pure functions: the JSON gateway's wire format (base64 request
bodies, response and watch-event parsing) and the scanner for members' zap logs.

    body = range_request("/minimesh/services/", prefix=True)     # dict for POST /v3/kv/range
    rev, events, created = parse_watch_message(json.loads(line))  # one line of /v3/watch
    events = scan_log(open(cluster.log_file(m)))                   # heartbeat_late, leader, ...

No I/O here: the async client (:mod:`testbed.mesh.etcd.client`) only moves these dicts
over HTTP, and the launcher (:mod:`testbed.mesh.etcd.cluster`) reads status and logs with them.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["b64e", "b64d", "prefix_end", "range_request", "put_request", "delete_request", "compare",
           "txn_request", "watch_request", "KV", "WatchEvent", "MemberStatus", "WatchError",
           "WatchCompacted", "parse_watch_message", "LogEvent", "scan_log"]


# --- the JSON gateway's wire format (pure) ----------------------------------------------------

def b64e(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def b64d(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _i(d: Mapping[str, Any], key: str) -> int:
    """int64 fields arrive as strings and are omitted when zero."""
    return int(d.get(key) or 0)


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix" (clientv3.GetPrefixRangeEnd)."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"  # all 0xff (or empty): every key


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key


def range_request(key: bytes | str, *, prefix: bool = False, serializable: bool = False,
                  revision: int = 0, limit: int = 0) -> dict[str, Any]:
    k = _key(key)
    req: dict[str, Any] = {"key": b64e(k)}
    if prefix:
        req["range_end"] = b64e(prefix_end(k))
    if serializable:
        req["serializable"] = True
    if revision:
        req["revision"] = revision
    if limit:
        req["limit"] = limit
    return req


def put_request(key: bytes | str, value: bytes | str, *, lease: int = 0) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64e(_key(key)), "value": b64e(value)}
    if lease:
        req["lease"] = str(lease)
    return req


def delete_request(key: bytes | str, *, prefix: bool = False) -> dict[str, Any]:
    k = _key(key)
    return {"key": b64e(k), **({"range_end": b64e(prefix_end(k))} if prefix else {})}


def compare(key: bytes | str, target: str, value: Any, result: str = "EQUAL") -> dict[str, Any]:
    """A txn compare: ``target`` VALUE (value bytes/str), MOD/CREATE (revision) or VERSION."""
    field_name = {"VALUE": "value", "MOD": "mod_revision", "CREATE": "create_revision",
                  "VERSION": "version"}.get(target)
    if field_name is None:
        raise ValueError(f"compare target {target!r}: allowed VALUE, MOD, CREATE, VERSION")
    if result not in ("EQUAL", "GREATER", "LESS", "NOT_EQUAL"):
        raise ValueError(f"compare result {result!r}: allowed EQUAL, GREATER, LESS, NOT_EQUAL")
    v = b64e(value) if target == "VALUE" else str(int(value))
    return {"key": b64e(_key(key)), "target": target, "result": result, field_name: v}


def txn_request(compares: Sequence[dict], success: Sequence[dict], failure: Sequence[dict] = ()) -> dict:
    """``success``/``failure`` ops are ``{"request_put": put_request(...)}``,
    ``{"request_range": ...}`` or ``{"request_delete_range": ...}``."""
    return {"compare": list(compares), "success": list(success), "failure": list(failure)}


def watch_request(key: bytes | str, *, prefix: bool = True, start_revision: int = 0,
                  prev_kv: bool = False) -> dict[str, Any]:
    """Always asks for progress notifications (empty responses carrying the revision, every
    ``watch_progress_ms``), so a client can tell a quiet stream from a dead one."""
    req = range_request(key, prefix=prefix)
    req["progress_notify"] = True
    if start_revision:
        req["start_revision"] = start_revision
    if prev_kv:
        req["prev_kv"] = True
    return {"create_request": req}


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "KV":
        return cls(b64d(d.get("key")), b64d(d.get("value")), _i(d, "create_revision"),
                   _i(d, "mod_revision"), _i(d, "version"), _i(d, "lease"))


@dataclass(frozen=True)
class WatchEvent:
    type: str                 # "PUT" or "DELETE"
    kv: KV
    prev_kv: KV | None = None
    revision: int = 0         # header revision of the response that carried it

    @property
    def key(self) -> bytes:
        return self.kv.key


@dataclass(frozen=True)
class MemberStatus:
    """``/v3/maintenance/status`` of one member. IDs are ints; logs print them in hex."""

    member_id: int
    leader_id: int            # 0: this member knows no leader
    raft_term: int
    raft_index: int
    revision: int
    version: str = ""
    errors: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MemberStatus":
        h = d.get("header") or {}
        return cls(_i(h, "member_id"), _i(d, "leader"), _i(d, "raftTerm"), _i(d, "raftIndex"),
                   _i(h, "revision"), str(d.get("version", "")), tuple(d.get("errors") or ()))


class WatchError(Exception):
    """The watch stream failed (no leader, cancelled by the server, stream ended)."""


class WatchCompacted(WatchError):
    def __init__(self, compact_revision: int):
        super().__init__(f"watch start revision was compacted (compact_revision {compact_revision}); re-list")
        self.compact_revision = compact_revision


def parse_watch_message(msg: Mapping[str, Any]) -> tuple[int, list[WatchEvent], bool]:
    """One line of the gateway's watch stream -> (header revision, events, created).
    Raises WatchError for an error line or a cancelled watch."""
    if "error" in msg:
        err = msg["error"]
        text = err.get("message") if isinstance(err, Mapping) else str(err)
        raise WatchError(f"watch failed: {text}")
    res = msg.get("result")
    if not isinstance(res, Mapping):
        raise WatchError(f"watch stream sent an unexpected line: {str(msg)[:200]}")
    rev = _i(res.get("header") or {}, "revision")
    if res.get("compact_revision") and res.get("canceled"):
        raise WatchCompacted(_i(res, "compact_revision"))
    if res.get("canceled"):
        raise WatchError(f"watch cancelled by the server: {res.get('cancel_reason') or 'no reason given'}")
    events = [WatchEvent(str(e.get("type") or "PUT"), KV.from_json(e.get("kv") or {}),
                         KV.from_json(e["prev_kv"]) if e.get("prev_kv") else None, rev)
              for e in res.get("events") or ()]
    return rev, events, bool(res.get("created"))


# --- what the logs say ---------------------------------------------------------------------

_ELECTED = re.compile(r"raft\.node: (\w+) elected leader (\w+) at term (\d+)")
_CHANGED = re.compile(r"raft\.node: (\w+) changed leader from (\w+) to (\w+) at term (\d+)")
_LOST = re.compile(r"raft\.node: (\w+) lost leader (\w+) at term (\d+)")
_CAMPAIGN = re.compile(r"(\w+) became (pre-candidate|candidate) at term (\d+)")


@dataclass(frozen=True)
class LogEvent:
    ts: str
    kind: str     # heartbeat_late | slow_request | leader | lost_leader | campaign
    term: int = 0
    leader: str = ""          # hex member id (as logged)
    detail: str = ""


def scan_log(lines: Iterable[str]) -> list[LogEvent]:
    """The events experiments look for in one member's zap log (JSON lines)."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg, ts = str(rec.get("msg", "")), str(rec.get("ts", ""))
        if "failed to send out heartbeat on time" in msg:
            out.append(LogEvent(ts, "heartbeat_late", detail=str(rec.get("exceeded-duration", ""))))
        elif "took too long" in msg:
            out.append(LogEvent(ts, "slow_request", detail=str(rec.get("took", ""))))
        elif m := _ELECTED.search(msg):
            out.append(LogEvent(ts, "leader", int(m[3]), m[2]))
        elif m := _CHANGED.search(msg):
            out.append(LogEvent(ts, "leader", int(m[4]), m[3]))
        elif m := _LOST.search(msg):
            out.append(LogEvent(ts, "lost_leader", int(m[3]), m[2]))
        elif m := _CAMPAIGN.search(msg):
            out.append(LogEvent(ts, "campaign", int(m[3]), detail=m[2]))
    return out
