"""Mininet's ``--custom FILE.py --topo NAME[,ARGS]``: a Python file defining
``topos = {'name': TopoClass_or_function}`` (Mininet's convention), and the topology built
from it by Mininet's own ``buildTopo`` (``mytopo,3,k=2`` -> ``topos['mytopo'](3, k=2)``).

    topo = custom_topology(["examples/topo-2sw-2host.py"], "mytopo")   # a mininet.topo.Topo

Errors are :class:`~testbed.topology.spec.TopologyError` with the file and, where Python
knows it, the line. The result is Mininet's ``Topo`` (not a spec): its link parameters
(``bw=10, delay='5ms'``) are TCLink's, which minimesh's link classes take.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from testbed.topology.spec import TopologyError

__all__ = ["custom_topology", "read_topos"]


def read_topos(file: str) -> dict[str, Any]:
    """Run the custom file (as mn does) and return its ``topos`` dictionary."""
    path = Path(file)
    if not path.is_file():
        raise TopologyError(file, None, "no such custom topology file")
    ns: dict[str, Any] = {"__file__": str(path), "__name__": "__minimesh_custom__"}
    try:
        exec(compile(path.read_text(), str(path), "exec"), ns, ns)   # as mn --custom does
    except SyntaxError as e:
        raise TopologyError(file, e.lineno, f"syntax error: {e.msg}") from None
    except Exception as e:
        raise TopologyError(file, _line_in(file, e), f"{type(e).__name__}: {e}") from None
    topos = ns.get("topos")
    if not isinstance(topos, dict) or not topos:
        raise TopologyError(file, None, "defines no topologies: Mininet's convention is "
                            "topos = {'mytopo': MyTopo} (a Topo class or a function returning one)")
    return topos


def _line_in(file: str, e: BaseException) -> int | None:
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(Path(file))]
    return lines[-1] if lines else None


def custom_topology(files: list[str], topo: str) -> Any:
    """The Topo ``topo`` (``NAME[,ARGS]``) names among the ``topos`` of ``files``."""
    # late: Mininet, only when a custom topology is asked for (--help and the specs do without it)
    from mininet.topo import Topo
    from mininet.util import buildTopo

    topos: dict[str, Any] = {}
    for file in files:
        topos.update(read_topos(file))
    where = ",".join(files)
    name = topo.split(",")[0].strip()
    if name not in topos:
        raise TopologyError(where, None, f"--topo {topo}: no topology {name!r}; "
                            f"defined: {', '.join(sorted(topos))}")
    try:
        built = buildTopo(topos, topo)
    except Exception as e:
        raise TopologyError(where, _line_in(files[-1], e), f"--topo {topo}: {type(e).__name__}: {e}") from None
    if not isinstance(built, Topo):
        raise TopologyError(where, None, f"--topo {topo}: topos[{name!r}] gave {type(built).__name__}, "
                            "not a mininet.topo.Topo")
    return built
