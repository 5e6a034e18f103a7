"""Differential runner: the same config and request sequence through real Envoy and
through minimesh-proxy, reduced to comparable :class:`Outcome` values.

An outcome is what a client and the upstreams observed for one request: the status, which
upstream instance answered (echo upstreams identify themselves), the Host / path / x-mm-*
headers it saw, how many upstream attempts the proxy made (records that arrived during the
request), the response's x-mm-* / x-echo-* headers, trace-header handling, and the body
when the proxy answered itself (compared where a scenario states it: direct_response).
Timing is kept (``elapsed_s``) and checked only against a scenario's stated bounds.
"""
from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from testbed.apps.echo import Behaviour, Identity
from tests.support.configs import CONFIG_DIR, placeholders, render
from tests.support.ports import free_ports
from tests.support.procs import start_proxy
from tests.support.upstream import Upstreams

__all__ = ["Req", "Outcome", "Scenario", "run_sequence", "run_with_stats", "envoy_outcomes",
           "envoy_stats", "differences", "check_expectations"]

_COMPARED_PREFIXES = ("x-mm-", "x-echo-")
_TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid",
                  "x-b3-spanid", "x-b3-sampled")


@dataclass(frozen=True)
class Req:
    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Outcome:
    status: int
    attempts: int
    instance: str | None = None
    host: str | None = None
    path: str | None = None
    method: str | None = None
    body_bytes: int | None = None
    upstream_headers: tuple[tuple[str, str], ...] = ()   # x-mm-* the upstream saw
    request_id_sent: bool | None = None                  # upstream saw an x-request-id
    trace_headers: tuple[tuple[str, str], ...] = ()      # (name, kept|changed|added)
    response_headers: tuple[tuple[str, str], ...] = ()   # x-mm-* / x-echo-* returned
    local_body: str | None = None                        # body when no upstream answered
    client_error: str | None = None                      # exception when no response came
    elapsed_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Scenario:
    name: str
    config: str                                   # file name in tests/configs
    upstreams: Mapping[str, tuple[Identity, Behaviour]]
    requests: tuple[Req, ...]
    expect: tuple[Mapping[str, Any], ...] = ()    # per request: Outcome fields Envoy must show


class _Client:
    """One keep-alive connection, reopened when the proxy closes it."""

    def __init__(self, port: int, timeout_s: float = 10.0):
        self.port, self.timeout_s, self.conn = port, timeout_s, None

    def send(self, req: Req) -> tuple[int, dict[str, str], bytes | str]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        headers = dict(req.headers)
        headers.setdefault("Host", "differential.test")
        try:
            self.conn.request(req.method, req.path, body=req.body or None, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return -1, {}, f"{type(e).__name__}: {e}"
        if resp.will_close:
            self.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _trace(req: Req, seen: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    sent = {k.lower(): v for k, v in req.headers}
    out = []
    for name in _TRACE_HEADERS:
        if name in seen:
            out.append((name, "added" if name not in sent else "kept" if seen[name] == sent[name] else "changed"))
        elif name in sent:
            out.append((name, "removed"))
    return tuple(out)


def _outcome(req: Req, status: int, resp_headers: dict[str, str], body: bytes | str,
             new_records: list[dict[str, Any]], elapsed_s: float) -> Outcome:
    if isinstance(body, str):  # the client got no response: body is the error
        return Outcome(status, len(new_records), client_error=body, elapsed_s=elapsed_s)
    shown = tuple(sorted((k, v) for k, v in resp_headers.items() if k.startswith(_COMPARED_PREFIXES)))
    if not new_records:
        return Outcome(status, 0, response_headers=shown,
                       local_body=body.decode("utf-8", "replace"), elapsed_s=elapsed_s)
    last = new_records[-1]
    seen = last["headers"]
    return Outcome(status, len(new_records), last["instance"], last["authority"], last["path"],
                   last["method"], last["body_bytes"],
                   tuple(sorted((k, v) for k, v in seen.items() if k.startswith("x-mm-"))),
                   "x-request-id" in seen, _trace(req, seen), shown, elapsed_s=elapsed_s)


def run_sequence(kind: str, config: str, upstreams: Mapping[str, tuple[Identity, Behaviour]],
                 requests: Sequence[Req]) -> list[Outcome]:
    """Start fresh upstreams and one ``kind`` proxy, send ``requests`` in order, stop all.
    Placeholders without an upstream (e.g. ``${UPSTREAM_REFUSED_PORT}``) get a free port
    nobody listens on."""
    return run_with_stats(kind, config, upstreams, requests)[0]


def run_with_stats(kind: str, config: str, upstreams: Mapping[str, tuple[Identity, Behaviour]],
                   requests: Sequence[Req]) -> tuple[list[Outcome], dict[str, int]]:
    """:func:`run_sequence`, plus the proxy's admin ``/stats`` counters afterwards
    (Envoy's text format ``name: value``; non-integer values are left out)."""
    with Upstreams(upstreams) as ups:
        text = (CONFIG_DIR / config).read_text()
        values: dict[str, int] = {f"UPSTREAM_{n.upper()}_PORT": ups.port(n) for n in upstreams}
        rest = [p for p in placeholders(text) if p not in values]
        values.update(zip(rest, free_ports(len(rest)), strict=True))
        outcomes: list[Outcome] = []
        with start_proxy(kind, render(config, values), values["ADMIN_PORT"]) as proxy:
            client = _Client(values["LISTEN_PORT"])
            try:
                for req in requests:
                    before = {n: len(ups.records(n)) for n in upstreams}
                    t0 = time.monotonic()
                    status, headers, body = client.send(req)
                    elapsed = time.monotonic() - t0
                    new = [r for n in upstreams for r in ups.records(n)[before[n]:]]
                    outcomes.append(_outcome(req, status, headers, body, new, elapsed))
            finally:
                client.close()
            code, stats_text = proxy.admin_get("/stats")
        stats = {}
        if code == 200:
            for line in stats_text.splitlines():
                name, _, value = line.partition(": ")
                if value.strip().lstrip("-").isdigit():
                    stats[name.strip()] = int(value)
        return outcomes, stats


_ENVOY_RUNS: dict[str, tuple[tuple[Outcome, ...], dict[str, int]]] = {}


def _envoy_run(scenario: Scenario) -> tuple[tuple[Outcome, ...], dict[str, int]]:
    if scenario.name not in _ENVOY_RUNS:
        outs, stats = run_with_stats("envoy", scenario.config, scenario.upstreams, scenario.requests)
        _ENVOY_RUNS[scenario.name] = (tuple(outs), stats)
    return _ENVOY_RUNS[scenario.name]


def envoy_outcomes(scenario: Scenario) -> list[Outcome]:
    """Real Envoy's outcomes for a scenario (run once per test session, by name)."""
    return list(_envoy_run(scenario)[0])


def envoy_stats(scenario: Scenario) -> dict[str, int]:
    """Real Envoy's /stats counters after the scenario (same run as envoy_outcomes)."""
    return dict(_envoy_run(scenario)[1])


def _describe(req: Req) -> str:
    hdrs = "".join(f" [{k}: {v}]" for k, v in req.headers)
    return f"{req.method} {req.path}{hdrs}"


def differences(scenario: Scenario, expected: Sequence[Outcome], got: Sequence[Outcome],
                label: str = "minimesh") -> list[str]:
    """One line per (request, field) where ``got`` differs from ``expected`` (Envoy). The
    text of a locally generated body is compared only where the scenario states it (a
    direct_response); Envoy's wording of its own error pages is not part of the contract."""
    out = []
    for i, (req, e, g) in enumerate(zip(scenario.requests, expected, got, strict=False)):   # counts: below
        stated = scenario.expect[i] if i < len(scenario.expect) else {}
        for f in fields(Outcome):
            if not f.compare or (f.name == "local_body" and "local_body" not in stated):
                continue
            if getattr(e, f.name) != getattr(g, f.name):
                out.append(f"#{i} {_describe(req)}: {f.name}: envoy={getattr(e, f.name)!r} "
                           f"{label}={getattr(g, f.name)!r}")
    if len(expected) != len(got):
        out.append(f"{len(expected)} envoy outcomes but {len(got)} {label} outcomes")
    return out


def check_expectations(scenario: Scenario, got: Sequence[Outcome]) -> list[str]:
    """Lines where an outcome does not show what the scenario states (``elapsed_max_s`` and
    ``elapsed_min_s`` bound the time; other keys are Outcome fields)."""
    out = []
    # scenario.expect may be shorter than the requests
    for i, (req, exp, g) in enumerate(zip(scenario.requests, scenario.expect, got, strict=False)):
        for key, want in exp.items():
            if key == "elapsed_max_s":
                ok, have = g.elapsed_s <= want, g.elapsed_s
            elif key == "elapsed_min_s":
                ok, have = g.elapsed_s >= want, g.elapsed_s
            else:
                have = getattr(g, key)
                ok = have == want
            if not ok:
                out.append(f"#{i} {_describe(req)}: {key}: expected {want!r}, got {have!r}")
    return out
