"""The graded exercises (testbed.run.exercises, `minimesh lab check`): each grader on runs
shaped like a correct solution's and two wrong ones' (the files in docs/labs/exercises/ and
tests/configs/lab_exercises/; tests/integration/test_lab_check.py runs them for real), the
command line built for them, the plan file's errors, and the report's exit rule."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from testbed.cli.app import build_parser
from testbed.cli.lab import check_argv, report
from testbed.history import Event, FaultRecord, HistoryData, Request
from testbed.run.exercises import EXERCISES, find, grade

REPO = Path(__file__).resolve().parents[2]
WRONG = REPO / "tests" / "configs" / "lab_exercises"


def _held(checks) -> list[bool]:
    return [c.held for c in checks]


def _stream(client: str, n: int, v2_share: float, seed: int = 1, fail: int = 0) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = 1 + i / 20
        v = "v2" if rng.random() < v2_share else "v1"
        out.append(Request(t, t + 0.01, 503 if i < fail else 200, version=v, instance=f"echo-{v}-0", client=client))
    return out


@pytest.mark.parametrize("android, iphone, expect", [
    (0.2, 0.0, [True, True, True]),              # the solution: 20 % of Android, no iPhone on v2
    (0.2, 0.2, [True, True, False]),             # wrong: 20 % of everyone
    (1.0, 0.0, [True, False, True]),             # wrong: the lab's rules, every Android on v2
])
def test_android_20(tmp_path, android, iphone, expect):
    data = HistoryData(tuple(_stream("android", 600, android) + _stream("iphone", 600, iphone, seed=2)))
    checks = grade("android-20", data, {}, {}, tmp_path)
    assert _held(checks) == expect, checks
    assert "interval" in checks[1].evidence and "/" in checks[1].evidence


def _crash_run(errors: int, crashed: bool = True) -> tuple[HistoryData, dict]:
    reqs = _stream("student", 480, 0.0, fail=0)
    reqs = [Request(r.t_start, r.t_end, 503 if 200 <= i < 200 + errors else 200, version="v1", client="student")
            for i, r in enumerate(reqs)]
    faults = (FaultRecord(4.0, 4.01, 0, "apply", {"kind": "crash", "target": "echo-v1-0"}, ok=crashed,
                          error=None if crashed else "no such process"),)
    metrics = {"phases": {"student": {"crash_t": 4.0, "sidecar_retries": 7, "ejected_after_s": 0.1}}}
    return HistoryData(tuple(reqs) + faults), metrics


@pytest.mark.parametrize("errors, crashed, expect", [
    (0, True, [True, True]),          # the solution: retries + outlier detection
    (12, True, [True, False]),        # wrong: outlier detection alone, requests to the dead replica fail
    (0, False, [False, True]),        # a run whose crash did not happen proves nothing
])
def test_zero_errors(tmp_path, errors, crashed, expect):
    data, metrics = _crash_run(errors, crashed)
    checks = grade("zero-errors", data, metrics, {}, tmp_path)
    assert _held(checks) == expect, checks
    assert f"{errors} of 480 failed" in checks[1].evidence


def _etcd_run(delay: float, elected: list[str], write_p50: float) -> tuple[HistoryData, dict]:
    windows = [{"delay_ms": 0, "p50_ms": 5.0, "ok": 58, "writes": 58},
               {"delay_ms": delay, "p50_ms": write_p50, "ok": 50, "writes": 58}]
    events = tuple(Event(7.0, "etcd:e1", "leader", {"leader": m, "config": "custom"}) for m in elected)
    return HistoryData(events), {"runs": {"custom": {"windows": windows, "leaders_elected": elected,
                                                     "election_ms": 1000}}}


@pytest.mark.parametrize("delay, elected, measured, stated, expect", [
    (300, [], 1212, 1210, [True, True, True]),            # the solution
    (2400, ["e1"], 9000, 9600, [True, False, True]),       # wrong: the delay elects a new leader
    (300, [], 1212, 600, [True, True, False]),             # wrong: 2 x the delay, not what was measured
])
def test_no_election(tmp_path, delay, elected, measured, stated, expect):
    data, metrics = _etcd_run(delay, elected, measured)
    checks = grade("no-election", data, metrics, {"plan": {"expect_write_p50_ms": stated}}, tmp_path)
    assert _held(checks) == expect, checks


def test_no_election_rejects_a_trivial_delay(tmp_path):
    data, metrics = _etcd_run(50, [], 205)
    checks = grade("no-election", data, metrics, {"plan": {"expect_write_p50_ms": 205}}, tmp_path)
    assert not checks[0].held and "[0, 50]" in checks[0].evidence


def _proxy_run(tmp: Path, upstream: list[int], client_fail: int) -> tuple[HistoryData, dict]:
    (tmp / "web.jsonl").write_text("".join(json.dumps({"status": s, "host": "gwadvnet20.github.io"}) + "\n"
                                           for s in upstream))
    reqs = [Request(1 + i / 20, 1.01 + i / 20, 503 if i < client_fail else 200, client="h2") for i in range(240)]
    return HistoryData(tuple(reqs)), {"curl_status": 200}


def test_retry_flaky(tmp_path):
    # the solution: every 3rd upstream answer 503, retried: 241 client requests, 361 upstream
    ok = _proxy_run(tmp_path, [503 if i % 3 == 2 else 200 for i in range(361)], 0)
    assert _held(grade("retry-flaky", *ok, {}, tmp_path)) == [True, True, True]
    # wrong: the seed's YAML (no retries): a third of the client requests fail
    seed = _proxy_run(tmp_path, [503 if i % 3 == 2 else 200 for i in range(241)], 80)
    checks = grade("retry-flaky", *seed, {}, tmp_path)
    assert _held(checks) == [True, False, False] and "80 of 240 failed" in checks[1].evidence
    # wrong: retry_on connect-failure (503s are not retried): the same failures
    cf = _proxy_run(tmp_path, [503 if i % 3 == 2 else 200 for i in range(241)], 80)
    assert not all(_held(grade("retry-flaky", *cf, {}, tmp_path)))


def test_every_exercise_has_its_solution_and_two_wrong_files():
    assert len({e.lab for e in EXERCISES}) >= 4
    for ex in EXERCISES:
        assert (REPO / ex.example).is_file(), ex.example
        assert len(list(WRONG.glob(f"{ex.name}-*.yaml"))) == 2, ex.name


def test_check_argv_and_errors(tmp_path):
    sol = REPO / "docs/labs/exercises/android-20.yaml"
    argv = check_argv("header_routing", "android-20", [str(sol)], tmp_path, python="py")
    assert argv == ["py", str(REPO / "experiments/header_routing.py"), "--quick", "--out", str(tmp_path),
                    "--rules", str(sol), "--exercise", "android-20"]
    assert "--fail-every" in check_argv("front_proxy", "retry-flaky", [str(sol)], tmp_path)
    with pytest.raises(ValueError, match="no such file: nope.yaml"):
        check_argv("header_routing", "android-20", ["nope.yaml"], tmp_path)
    with pytest.raises(ValueError, match="has no exercise 'x'; it has: android-20"):
        find("header_routing", "x")
    with pytest.raises(ValueError, match="no lab 'canary' with exercises"):
        find("canary", "android-20")
    args = build_parser().parse_args(["lab", "check", "header_routing", "android-20", str(sol)])
    assert args.lab == "header_routing" and args.files == [str(sol)]


def test_report_exits_zero_only_when_every_check_held():
    good = {"verdicts": {"exercise x: a": {"valid": True, "detail": "3 of 3"}}}
    bad = {"verdicts": {"exercise x: a": {"valid": True, "detail": ""}, "exercise x: b": {"valid": False,
                                                                                        "detail": "1 failed"}}}
    assert report(good)[0] and "[held] a" in report(good)[1][0]
    held, lines = report(bad)
    assert not held and any("[NOT held] b" in ln for ln in lines) and any("1 failed" in ln for ln in lines)
    assert not report({"verdicts": {}})[0]


def test_plan_file_errors_name_file_line_and_key(tmp_path):
    from lablib.etcd import read_plan
    assert read_plan(REPO / "docs/labs/exercises/no-election.yaml")["delays_ms"] == [0, 300]
    bad = tmp_path / "plan.yaml"
    bad.write_text("delays_ms: [0, 100]\nstep: 3\n")
    with pytest.raises(ValueError, match=r"plan.yaml:2: step: unknown key; allowed: delays_ms, step_s"):
        read_plan(bad)
    bad.write_text("leader: e9\n")
    with pytest.raises(ValueError, match=r"plan.yaml:1: leader: allowed e1, e2, e3"):
        read_plan(bad)
    bad.write_text("jump_ms: fast\n")
    with pytest.raises(ValueError, match=r"plan.yaml:1: jump_ms: .* a number >= 0, got 'fast'"):
        read_plan(bad)


def test_replicas_flag_keeps_the_first_instances():
    from lablib.mesh import with_replicas
    from testbed.topology.load import load_topology
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    spec = load_topology(REPO / "topologies" / "mesh-lab.yaml").sections["mesh"]
    one = with_replicas(spec, {"v1": 1})
    assert [i.instance for i in one.instances if i.service == "echo"] == ["echo-v1-0", "echo-v2-0"]
    with pytest.raises(ValueError, match="--replicas v1=4: allowed versions v1, v2 with 1 to their count"):
        with_replicas(spec, {"v1": 4})
