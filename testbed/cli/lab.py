"""``minimesh lab check LAB EXERCISE FILE...``: a graded "your turn" exercise
(testbed.run.exercises). Runs ``experiments/LAB.py --quick`` with the exercise's flags and
the student's files on the lab's topology, then prints each check — held or not, with the
evidence (counts, latencies, capture filters) — and exits 0 only when every check held.
``minimesh lab list``: the exercises, their goals and a solution's file name.
``minimesh lab record PAGE RESULTS``: a run's checks and tshark counts into its lab page
(testbed.run.labpage)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

from testbed.cli.subcommand import EXIT_USAGE, Subcommand
from testbed.paths import REPO

__all__ = ["SUBCOMMANDS", "check_argv", "report"]


def check_argv(lab: str, exercise: str, files: list[str], out: Path, python: str = sys.executable) -> list[str]:
    """The experiment's command line; raises ValueError in the user's words (unknown lab or
    exercise, a file that does not exist)."""
    from testbed.run.exercises import find   # late: testbed.run is not for `minimesh --help`
    ex = find(lab, exercise)
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise ValueError(f"minimesh lab check {lab} {exercise}: " + (f"no such file: {', '.join(missing)}" if missing
                         else f"give your file(s): {ex.files}"))
    return [python, str(REPO / "experiments" / f"{lab}.py"), "--quick", "--out", str(out), *ex.argv(files)]


def report(results: dict) -> tuple[bool, list[str]]:
    """(every check held, the lines to print) from an exercise run's results.json."""
    lines, held = [], bool(results.get("verdicts"))
    for name, v in results.get("verdicts", {}).items():
        ok = bool(v.get("valid"))
        held &= ok
        lines.append(f"  [{'held' if ok else 'NOT held'}] {name.split(': ', 1)[-1]}")
        lines.append(f"      evidence: {v.get('detail', '')}")
    return held, lines


def _list(args: argparse.Namespace) -> int:
    from testbed.run.exercises import EXERCISES   # late: testbed.run is not for `minimesh --help`
    for ex in EXERCISES:
        print(f"{ex.lab} {ex.name}: {ex.goal}\n    files: {ex.files}\n    e.g. minimesh lab check {ex.lab} "
              f"{ex.name} {ex.example}")
    return 0


def _check(args: argparse.Namespace) -> int:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or Path("results") / f"lab-{args.lab}-{args.exercise}-{stamp}").resolve()
    try:
        argv = check_argv(args.lab, args.exercise, list(args.files), out)
    except ValueError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    from testbed.run.exercises import find   # late: testbed.run is not for `minimesh --help`
    ex = find(args.lab, args.exercise)
    print(f"exercise {ex.lab}/{ex.name}: {ex.goal}\n$ {' '.join(argv[1:])}", flush=True)
    env = {**os.environ, "MINIMESH_PYTHON": sys.executable}
    r = subprocess.run(argv, env=env)
    path = out / "results.json"
    if not path.exists():
        print(f"the lab did not run (exit status {r.returncode}): no {path}", file=sys.stderr)
        return 1
    held, lines = report(json.loads(path.read_text()))
    print(f"\n=== {ex.lab}/{ex.name}: {'every check held' if held else 'not every check held'} (results in {out})")
    print("\n".join(lines), flush=True)
    return 0 if held and r.returncode == 0 else 1


def _record(args: argparse.Namespace) -> int:
    from testbed.run.labpage import record   # late: testbed.run is not for `minimesh --help`
    if not args.page.is_file() or not (args.results / "results.json").is_file():
        print(f"minimesh lab record: need a page ({args.page}) and a run's results.json "
              f"({args.results / 'results.json'})", file=sys.stderr)
        return EXIT_USAGE
    stored = record(args.page, args.results, REPO)
    print(f"{args.page}: recorded run from {args.results} (stored as {stored})")
    return 0


def _configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lab_command", metavar="{check,list,record}", required=True)
    c = sub.add_parser("check", help="grade your solution: runs the lab (--quick) with your file(s)")
    c.add_argument("lab", help="the lab, e.g. header_routing (minimesh lab list)")
    c.add_argument("exercise", help="the exercise, e.g. android-20")
    c.add_argument("files", nargs="*", help="your rule, fault or config file(s)")
    c.add_argument("--out", type=Path, help="results directory (default ./results/lab-LAB-EXERCISE-<timestamp>)")
    c.set_defaults(_lab=_check)
    sub.add_parser("list", help="the graded exercises").set_defaults(_lab=_list)
    r = sub.add_parser("record", help="put a run's checks and tshark counts into its lab page")
    r.add_argument("page", type=Path, help="docs/labs/LAB.md")
    r.add_argument("results", type=Path, help="the run's --out directory")
    r.set_defaults(_lab=_record)


def _run(args: argparse.Namespace) -> int:
    return int(args._lab(args))


SUBCOMMANDS = [Subcommand("lab", "graded lab exercises: `lab list`, `lab check LAB EXERCISE FILE...` (exit 0 when "
                          "every check held)", _configure, _run)]
