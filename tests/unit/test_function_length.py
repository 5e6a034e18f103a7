"""Functions stay short: at most a screen each (docs/architecture.md).

Modules have no length cap -- one concept per module, however long it takes -- but every
function and method in testbed/, proxy/ and experiments/ (scripts and lablib) is at most
``MAX_LINES`` lines, from its ``def`` to its last line; a nested function counts inside its
parent (and is checked on its own as well). Checked on the source: nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("testbed", "proxy", "experiments")
MAX_LINES = 60


def function_lengths(path: Path) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function and method in the file, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    return [(n.lineno, n.name, (n.end_lineno or n.lineno) - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def too_long(max_lines: int = MAX_LINES) -> list[str]:
    bad = []
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            for line, name, n in function_lengths(path):
                if n > max_lines:
                    bad.append(f"{path.relative_to(REPO)}:{line} {name} ({n} lines)")
    return bad


def test_functions_stay_short():
    bad = too_long()
    assert not bad, (f"{len(bad)} function(s) longer than {MAX_LINES} lines; split them (one step, "
                     "one concern per function):\n" + "\n".join(bad))


def test_the_rule_sees_methods_nested_functions_and_async(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("class C:\n"
                   "    async def m(self):\n"
                   "        def inner():\n"
                   "            return 1\n"
                   "        return inner()\n"
                   "\n"
                   "def f():\n"
                   "    pass\n")
    assert sorted(function_lengths(src)) == [(2, "m", 4), (3, "inner", 2), (7, "f", 2)]
