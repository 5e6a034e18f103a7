"""Link shapes: the netem model of one direction of a link, as a frozen value.

Units are parsed from strings at the edge (YAML, CLI) by :func:`parse_params`;
inside, every field carries its unit in its name (``delay_ms``, ``bw_mbit``).
Both link backends (kernel netem and the userspace emulator) consume the same
:class:`LinkShape`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["LinkShape", "ShapeError", "parse_params", "parse_time_ms", "parse_rate_mbit",
           "parse_percent", "parse_direction", "link_directions", "SHAPE_FIELDS"]


class ShapeError(ValueError):
    """A link parameter is malformed. ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LinkShape:
    """One direction of a link, in netem's model.

    delay_ms/jitter_ms: per-packet delay, uniformly distributed in
    [delay - jitter, delay + jitter] (netem's default distribution).
    loss_pct (+ loss_corr_pct), duplicate_pct, corrupt_pct: per-packet probabilities.
    reorder_pct: that share of packets skips the delay line (sent at once), as netem's
    ``reorder``; needs delay_ms > 0. bw_mbit: rate limit (None = unlimited).
    queue_pkts: queue limit in packets (netem's ``limit``; default 1000).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    loss_corr_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0
    corrupt_pct: float = 0.0
    bw_mbit: float | None = None
    queue_pkts: int = 1000

    def __post_init__(self) -> None:
        for f in ("delay_ms", "jitter_ms"):
            v = getattr(self, f)
            if not 0 <= v <= MAX_DELAY_MS:        # also refuses NaN
                raise ShapeError(f, f"must be between 0 and {MAX_DELAY_MS / 1000:g}s, got {v} ms")
        for f in ("loss_pct", "loss_corr_pct", "duplicate_pct", "reorder_pct", "corrupt_pct"):
            v = getattr(self, f)
            if not 0.0 <= v <= 100.0:
                raise ShapeError(f, f"must be between 0% and 100%, got {v}%")
        if self.bw_mbit is not None and not 0 < self.bw_mbit <= MAX_RATE_MBIT:
            raise ShapeError("bw_mbit", f"must be > 0 and at most {MAX_RATE_MBIT:g} Mbit/s, got {self.bw_mbit}")
        if not 1 <= self.queue_pkts <= MAX_QUEUE_PKTS:
            raise ShapeError("queue_pkts", f"must be between 1 and {MAX_QUEUE_PKTS} packets "
                                           f"(netem's 32-bit limit), got {self.queue_pkts}")
        if self.reorder_pct and not self.delay_ms:
            raise ShapeError("reorder_pct", "reorder needs a delay: reordered packets skip the delay line")
        if self.jitter_ms > self.delay_ms and self.jitter_ms > 0:
            # netem clamps negative delays to 0; we refuse instead of silently skewing.
            raise ShapeError("jitter_ms", f"jitter ({self.jitter_ms} ms) must not exceed delay ({self.delay_ms} ms)")

    def replace(self, **changes: Any) -> "LinkShape":
        return dataclasses.replace(self, **changes)

    @property
    def is_identity(self) -> bool:
        """True when the shape changes nothing (no delay, loss, ... and no rate limit)."""
        return self == LinkShape(queue_pkts=self.queue_pkts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay={_num(self.delay_ms)}ms")
        if self.jitter_ms:
            parts.append(f"jitter={_num(self.jitter_ms)}ms")
        if self.loss_pct:
            parts.append(f"loss={_num(self.loss_pct)}%")
        if self.loss_corr_pct:
            parts.append(f"loss_corr={_num(self.loss_corr_pct)}%")
        if self.duplicate_pct:
            parts.append(f"duplicate={_num(self.duplicate_pct)}%")
        if self.reorder_pct:
            parts.append(f"reorder={_num(self.reorder_pct)}%")
        if self.corrupt_pct:
            parts.append(f"corrupt={_num(self.corrupt_pct)}%")
        if self.bw_mbit is not None:
            parts.append(f"bw={_num(self.bw_mbit)}Mbit")
        if self.queue_pkts != 1000:
            parts.append(f"queue={self.queue_pkts}")
        return " ".join(parts) or "(no impairment)"


def _num(v: float) -> str:
    return f"{v:g}"


# --- bounds: what both backends can honour -------------------------------------------

MAX_DELAY_MS = 3_600_000.0        # 1 h: each backend holds every delayed packet in memory
MAX_RATE_MBIT = 1_000_000.0       # 1 Tbit/s: far above any veth or TAP, and finite
MAX_QUEUE_PKTS = 2**32 - 1        # netem's `limit` is a 32-bit count

# --- unit parsing at the edge ------------------------------------------------------

_NUM = r"((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_RATE_UNITS = {
    "bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3,
    "bps": 8e-6, "kbps": 8e-3, "mbps": 8.0, "gbps": 8e3,  # tc's convention: bps = bytes/s
}


def parse_time_ms(field: str, value: Any) -> float:
    """'10ms', '1.5s', '250us' -> milliseconds. A bare number is milliseconds."""
    if isinstance(value, bool):
        raise ShapeError(field, f"expected a time such as 10ms, got {value!r}")
    if isinstance(value, (int, float)):
        ms = float(value)
    else:
        m = re.fullmatch(_NUM + r"\s*(us|ms|s)", str(value).strip())
        if not m:
            raise ShapeError(field, f"bad time {value!r}: use a number with us, ms or s (e.g. 10ms)")
        ms = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    if not 0 <= ms <= MAX_DELAY_MS:               # also refuses NaN and infinity
        raise ShapeError(field, f"must be between 0 and {MAX_DELAY_MS / 1000:g}s, got {value!r}")
    return ms


def parse_rate_mbit(field: str, value: Any) -> float:
    """'20Mbit', '1Gbit', '500kbit' -> Mbit/s. A bare number is Mbit/s (as Mininet's bw=)."""
    if isinstance(value, bool):
        raise ShapeError(field, f"expected a rate such as 20Mbit, got {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = re.fullmatch(_NUM + r"\s*([A-Za-z]+)", str(value).strip())
        if not m or m.group(2).lower() not in _RATE_UNITS:
            raise ShapeError(field, f"bad rate {value!r}: use a number with bit, kbit, mbit, gbit "
                                    "(bits/s) or bps, kbps, mbps, gbps (bytes/s), e.g. 20Mbit")
        rate = float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    if not 0 < rate <= MAX_RATE_MBIT:               # also refuses NaN and infinity
        raise ShapeError(field, f"must be > 0 and at most {MAX_RATE_MBIT / 1e6:g}Tbit, got {value!r}")
    return rate


def parse_percent(field: str, value: Any) -> float:
    """'0.5%' or 0.5 -> 0.5 (percent). Must lie in [0, 100]."""
    if isinstance(value, bool):
        raise ShapeError(field, f"expected a percentage such as 1%, got {value!r}")
    if isinstance(value, (int, float)):
        pct = float(value)
    else:
        m = re.fullmatch(_NUM + r"\s*%?", str(value).strip())
        if not m:
            raise ShapeError(field, f"bad percentage {value!r}: use e.g. 0.5%")
        pct = float(m.group(1))
    if not 0.0 <= pct <= 100.0:
        raise ShapeError(field, f"must be between 0% and 100%, got {value!r}")
    return pct


def parse_count(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ShapeError(field, f"expected a whole number of packets, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ShapeError(field, f"expected a whole number of packets, got {value!r}") from None
    if not 1 <= n <= MAX_QUEUE_PKTS:
        raise ShapeError(field, f"must be between 1 and {MAX_QUEUE_PKTS} packets (netem's 32-bit "
                                f"limit), got {value!r}")
    return n


# user-facing parameter name -> (LinkShape field, parser)
SHAPE_FIELDS: dict[str, tuple[str, Any]] = {
    "delay": ("delay_ms", parse_time_ms),
    "jitter": ("jitter_ms", parse_time_ms),
    "loss": ("loss_pct", parse_percent),
    "loss_correlation": ("loss_corr_pct", parse_percent),
    "duplicate": ("duplicate_pct", parse_percent),
    "reorder": ("reorder_pct", parse_percent),
    "corrupt": ("corrupt_pct", parse_percent),
    "bw": ("bw_mbit", parse_rate_mbit),
    "queue": ("queue_pkts", parse_count),
}


def parse_params(params: Mapping[str, Any], base: LinkShape | None = None) -> LinkShape:
    """Turn user-facing parameters ({'delay': '10ms', 'loss': '1%'}) into a LinkShape.

    Unknown names raise ShapeError naming the field and listing the allowed ones.
    ``bw: none`` / ``off`` (or null) removes a rate limit; ``bw: 0`` is an error. Values not given keep ``base``'s.
    """
    changes: dict[str, Any] = {}
    for name, value in params.items():
        if name not in SHAPE_FIELDS:
            raise ShapeError(name, "unknown link parameter; allowed: " + ", ".join(SHAPE_FIELDS))
        attr, parser = SHAPE_FIELDS[name]
        if name == "bw" and (value is None or str(value).lower() in ("none", "off")):
            changes[attr] = None
            continue
        changes[attr] = parser(name, value)
    try:
        return (base or LinkShape()).replace(**changes)
    except ShapeError as e:
        # report with the user-facing name
        user = {v[0]: k for k, v in SHAPE_FIELDS.items()}.get(e.field, e.field)
        raise ShapeError(user, e.message) from None


def parse_direction(direction: str, a: str, b: str) -> bool:
    """One direction of link a-b: ``"a->b"`` -> True, ``"b->a"`` -> False (spaces around the
    arrow allowed); anything else raises ShapeError (field ``direction``)."""
    parts = [p.strip() for p in str(direction).split("->")]
    if parts == [a, b]:
        return True
    if parts == [b, a]:
        return False
    raise ShapeError("direction", f"{direction!r}: use {a}->{b} or {b}->{a}")


def link_directions(direction: str | None, a: str, b: str) -> tuple[bool, bool]:
    """Which directions of link a-b a change touches, as (a->b, b->a): both for None, else
    the one :func:`parse_direction` names."""
    if direction is None:
        return True, True
    ab = parse_direction(direction, a, b)
    return ab, not ab
