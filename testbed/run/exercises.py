"""Graded exercises ("your turn", Killercoda-style step checks): the student writes the rule
or the fault, ``minimesh lab check LAB EXERCISE FILE...`` runs the lab's experiment with it
(``--quick`` plus the exercise's flags) and grades the observed effect.

    ex = find("canary", "android-20")          # raises ValueError naming what exists
    argv = ex.argv(["my-rules.yaml"])           # the experiment's flags for those files
    checks = grade("android-20", data, metrics, params, out)   # in the experiment's analyze

Each check is ``(name, held, evidence)``: the evidence is what was measured (counts,
latencies, the capture filter that shows it). An experiment run with ``--exercise NAME``
replaces its own claims by these checks (its claims stay in ``metrics.lab_checks``), so its
exit status, and ``minimesh lab check``'s, is 0 only when every check held.

Pure functions of the run's history and metrics: tests/unit/test_lab_exercises.py grades a
correct and two wrong solutions of each exercise on recorded shapes of runs, and
tests/integration/test_lab_check.py runs them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from testbed.history import HistoryData, Request
from testbed.run.checkers.stats import wilson

__all__ = ["Check", "Exercise", "EXERCISES", "find", "grade", "CONFIDENCE"]

CONFIDENCE = 0.999          # shares: the 99.9 % Wilson interval must contain the goal


@dataclass(frozen=True)
class Check:
    name: str
    held: bool
    evidence: str


@dataclass(frozen=True)
class Exercise:
    lab: str                 # experiments/<lab>.py
    name: str
    goal: str                # what the student must achieve, and the tolerance
    files: str               # what the files are
    flags: tuple[str, ...]   # the experiment's flags; "{files}" expands to the files
    example: str             # a correct solution in the repository (tests grade it)

    def argv(self, files: Sequence[str]) -> list[str]:
        out: list[str] = []
        for f in self.flags:
            out += [str(Path(x).resolve()) for x in files] if f == "{files}" else [f]
        return out + ["--exercise", self.name]


EXERCISES: tuple[Exercise, ...] = (
    Exercise("header_routing", "android-20",
             "Android users get 20 % v2 (the rest v1), iPhone users only v1: every request answered 200, the "
             f"Android v2 share's {CONFIDENCE:.1%} Wilson interval contains 20 %, no iPhone request served by v2",
             "Istio YAML (DestinationRule + VirtualService), applied like `minimesh apply -f`",
             ("--rules", "{files}"), "docs/labs/exercises/android-20.yaml"),
    Exercise("crash_failover", "zero-errors",
             "one echo v1 replica (echo-v1-0) is killed under 40 req/s: 0 client errors, from start to end",
             "Istio YAML for echo (DestinationRule and/or VirtualService)",
             ("--phases", "student", "--rules", "{files}"), "docs/labs/exercises/zero-errors.yaml"),
    Exercise("etcd_leader_latency", "no-election",
             "a delay on the etcd leader's link (>= 200 ms one-way) that elects no new leader, with the write "
             "latency you measured (`expect_write_p50_ms`) within 25 % of the grader's",
             "a plan file (YAML: delays_ms, step_s, heartbeat_ms, election_ms, expect_write_p50_ms; "
             "docs/labs/etcd_leader_latency.md)",
             ("--plan", "{files}"), "docs/labs/exercises/no-election.yaml"),
    Exercise("front_proxy", "retry-flaky",
             "the web server answers every 3rd request 503 (--fail-every 3): the front proxy retries, so every "
             "client request gets 200 while the upstream saw 503s",
             "the front proxy's YAML (the seed's envoy.yaml, changed)",
             ("--proxy-config", "{files}", "--fail-every", "3"), "docs/labs/exercises/retry-flaky.yaml"),
)


def find(lab: str, name: str) -> Exercise:
    for ex in EXERCISES:
        if ex.lab == lab and ex.name == name:
            return ex
    labs = sorted({e.lab for e in EXERCISES})
    if lab not in labs:
        raise ValueError(f"no lab {lab!r} with exercises; labs: {', '.join(labs)}")
    raise ValueError(f"lab {lab!r} has no exercise {name!r}; it has: "
                     + ", ".join(e.name for e in EXERCISES if e.lab == lab))


def _errors(requests: Sequence[Request]) -> str:
    bad = [r for r in requests if not r.ok]
    kinds = sorted({r.flags or str(r.status or r.error) for r in bad})
    return f"{len(bad)} of {len(requests)} failed" + (f" ({', '.join(kinds)[:120]})" if bad else "")


def _no_errors(requests: Sequence[Request], what: str, minimum: int) -> Check:
    ok = len(requests) >= minimum and all(r.ok for r in requests)
    return Check(f"every {what} request answered 200 (>= {minimum} sent)", ok, _errors(requests))


def _android_20(data: HistoryData, metrics: Mapping[str, Any], params: Mapping[str, Any], out: Path) -> list[Check]:
    android = [r for r in data.requests if r.client == "android"]
    iphone = [r for r in data.requests if r.client == "iphone"]
    served = [r for r in android if r.ok]
    k = sum(r.version == "v2" for r in served)
    lo, hi = wilson(k, len(served), CONFIDENCE)
    iv2 = sum(r.version == "v2" for r in iphone if r.ok)
    filt = 'c0-eth0.pcapng: http.user_agent contains "Android" (requests), http contains "\\"version\\": \\"v2\\""'
    return [_no_errors(android + iphone, "Android and iPhone", 200),
            Check(f"Android v2 share: its {CONFIDENCE:.1%} interval contains 20 %", bool(served) and lo <= 0.2 <= hi,
                  f"v2 served {k}/{len(served)} = {k / max(len(served), 1):.1%}, interval [{lo:.1%}, {hi:.1%}]; "
                  f"{filt}"),
            Check("no iPhone request served by v2", bool(iphone) and iv2 == 0,
                  f"{iv2} of {len(iphone)} iPhone requests served by v2; versions: "
                  f"{dict(sorted(_count(r.version or '-' for r in iphone).items()))}")]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _zero_errors(data: HistoryData, metrics: Mapping[str, Any], params: Mapping[str, Any], out: Path) -> list[Check]:
    phase = (metrics.get("phases") or {}).get("student") or {}
    mine = [r for r in data.requests if r.client == "student"]
    crashes = [f for f in data.faults if f.phase == "apply" and f.fault.get("kind") == "crash"]
    crash_t = phase.get("crash_t")
    after = [r for r in mine if crash_t is not None and r.t_start >= crash_t]
    crashed = bool(crashes) and all(f.ok for f in crashes)
    return [Check("the replica was killed under load", crashed and len(after) >= 100,
                  f"{len(crashes)} crash fault(s) applied ({'ok' if crashed else 'failed or none'}) at "
                  f"t={crash_t if crash_t is None else round(crash_t, 2)} s; {len(after)} requests after it"),
            Check("0 client errors, from start to end", bool(mine) and all(r.ok for r in mine),
                  f"{_errors(mine)}; after the crash: {_errors(after)}; c0's sidecar retried "
                  f"{phase.get('sidecar_retries')} times; echo-v1-0 ejected after {phase.get('ejected_after_s')} s; "
                  "c0-eth0.pcapng: tcp.flags.reset == 1 (connects refused by the dead replica)")]


def _no_election(data: HistoryData, metrics: Mapping[str, Any], params: Mapping[str, Any], out: Path) -> list[Check]:
    runs = metrics.get("runs") or {}
    run: dict[str, Any] = next(iter(runs.values()), {})
    windows = run.get("windows") or []
    delayed = [w for w in windows if w.get("delay_ms", 0) >= 200]
    top = max(delayed, key=lambda w: w["delay_ms"], default=None)
    elected = run.get("leaders_elected") or []
    expect = (params.get("plan") or {}).get("expect_write_p50_ms")
    got = top.get("p50_ms") if top else None
    close = expect is not None and got is not None and abs(expect - got) <= 0.25 * got
    return [Check("the plan delays the leader's link by >= 200 ms one-way", top is not None,
                  f"delays (ms): {[w.get('delay_ms') for w in windows]}"),
            Check("no new leader elected while the delay was in force", bool(run) and not elected,
                  f"leaders elected after the first delay: {elected or 'none'} (etcd:<member> 'leader' events; "
                  f"election timeout {run.get('election_ms')} ms); e3-eth0.pcapng: tcp.port == 2380"),
            Check("writes measured: expect_write_p50_ms within 25 % of the grader's write p50", close,
                  f"you wrote {expect} ms; measured write p50 at {top and top['delay_ms']} ms: "
                  f"{'-' if got is None else round(got)} ms "
                  f"({top and top.get('ok')}/{top and top.get('writes')} writes acknowledged)")]


def _retry_flaky(data: HistoryData, metrics: Mapping[str, Any], params: Mapping[str, Any], out: Path) -> list[Check]:
    client = [r for r in data.requests if r.client == "h2"]
    web = out / "web.jsonl"
    seen = [json.loads(ln) for ln in web.read_text().splitlines() if ln.strip()] if web.exists() else []
    flaky = sum(r.get("status") == 503 for r in seen)
    curl = metrics.get("curl_status")
    return [Check("the upstream was flaky (the web server answered 503)", flaky > 0,
                  f"{flaky} of {len(seen)} upstream requests answered 503 (web.jsonl; web-eth0.pcapng: "
                  "http.response.code == 503)"),
            Check("every client request got 200 (the tutorial's curl and the load)",
                  curl == 200 and len(client) >= 100 and all(r.ok for r in client),
                  f"curl: {curl}; load: {_errors(client)} (h2-eth0.pcapng: http.response.code == 503)"),
            Check("the proxy retried: the upstream saw more requests than the clients sent",
                  len(seen) > len(client) + 1, f"{len(seen)} upstream requests for {len(client) + 1} client requests")]


GRADERS: dict[str, Callable[[HistoryData, Mapping[str, Any], Mapping[str, Any], Path], list[Check]]] = {
    "android-20": _android_20, "zero-errors": _zero_errors, "no-election": _no_election,
    "retry-flaky": _retry_flaky}


def grade(name: str, data: HistoryData, metrics: Mapping[str, Any], params: Mapping[str, Any],
          out: Path) -> list[Check]:
    return GRADERS[name](data, metrics, params, out)
