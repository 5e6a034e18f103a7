"""The labs' side of the graded exercises (testbed.run.exercises): the ``--exercise NAME``
flag, and :func:`apply_exercise` at the end of ``analyze``, which replaces the lab's own
claims by the exercise's checks (the lab's verdicts stay in ``metrics.lab_checks``)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from testbed.history import HistoryData
from testbed.run.exercises import EXERCISES, grade

if TYPE_CHECKING:
    from testbed.run.experiment import Context

__all__ = ["add_exercise_flag", "apply_exercise"]


def add_exercise_flag(ap: argparse.ArgumentParser, lab: str) -> None:
    names = [e.name for e in EXERCISES if e.lab == lab]
    ap.add_argument("--exercise", choices=names, help="grade a 'your turn' exercise instead of the lab's claims "
                    "(as `minimesh lab check` runs it)")


def apply_exercise(ctx: Context, data: HistoryData) -> None:
    name = getattr(ctx.args, "exercise", None)
    if not name:
        return
    ctx.metrics["lab_checks"] = {k: bool(getattr(v, "valid", v.get("valid") if isinstance(v, dict) else False))
                                 for k, v in ctx.verdicts.items()}
    checks = grade(name, data, ctx.metrics, ctx.params, ctx.out)
    ctx.metrics["exercise"] = {"name": name, "checks": [{"name": c.name, "held": c.held, "evidence": c.evidence}
                                                         for c in checks]}
    ctx.verdicts.clear()
    for c in checks:
        ctx.claim(f"exercise {name}: {c.name}", c.held, c.evidence)
