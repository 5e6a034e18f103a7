"""``minimesh run experiments/X.py [--out DIR] [--quick] ...``: run an experiment script with
this interpreter (the one minimesh runs under, which has every dependency), passing the
rest of the command line through. The script's exit status is minimesh's."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from testbed.cli.subcommand import EXIT_USAGE, Subcommand

__all__ = ["SUBCOMMANDS", "script_argv"]


def script_argv(script: str, rest: list[str], python: str = sys.executable) -> list[str]:
    """The command line that runs ``script``; raises ValueError in the user's words when it
    is not a Python file."""
    p = Path(script)
    if not p.is_file():
        near = sorted(x.name for x in Path("experiments").glob("*.py") if not x.name.startswith("_")) \
            if Path("experiments").is_dir() else []
        raise ValueError(f"minimesh run: no such script {script!r}"
                         + (f"; experiments here: {', '.join(near)}" if near else ""))
    if p.suffix != ".py":
        raise ValueError(f"minimesh run: {script!r} is not a .py script")
    return [python, str(p), *rest]


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("script", help="experiment script, e.g. experiments/link_delay.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (--out DIR, --quick, ...)")


def _run(args: argparse.Namespace) -> int:
    try:
        argv = script_argv(args.script, list(args.args))
    except ValueError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ.setdefault("MINIMESH_PYTHON", sys.executable)
    os.execv(argv[0], argv)
    return 1  # pragma: no cover  (execv does not return)


SUBCOMMANDS = [Subcommand("run", "run an experiment script (experiments/X.py) with minimesh's interpreter",
                          _configure, _run)]
