"""Topology fuzz (issue 14): the shipped topologies broken one edit at a time (a line
deleted or duplicated, a value replaced by a hostile one, a host name replaced by a switch
name). Every result either loads into a topology whose mesh hosts all have a link, or is
refused with a TopologyError at a line of the file naming the field; through the CLI,
`minimesh up BROKEN.yaml` exits 2 with ``file:line: field: ...`` and creates nothing.

The loader part needs no root (CI: 300 seeded edits; MINIMESH_LONG_RELIABILITY=1: 3000).
The CLI part is root-only and runs `minimesh up`, so it runs in /work/bin/mm-isolated or
re-runs itself in private namespaces (CI: 8 files; long: 100).
"""
from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

import pytest

import testbed.mesh.spec  # noqa: F401  (registers the mesh: section, as the CLI does)
from reliability_support import (LONG, REPO, SEED, census, isolated, minimesh_cmd, minimesh_env, record,
                                 rerun_isolated)
from testbed.topology.load import parse_topology
from testbed.topology.spec import TopologyError

SOURCES = ["line3.yaml", "mesh-echo.yaml", "etcd-split.yaml", "wan.yaml", "mesh-lab.yaml", "front-proxy.yaml"]
HOSTILE = [".inf", "-.inf", ".nan", "-1", "0", "1e30s", "100000s", "10000000000000", "1e400", "s1", "cp",
           "''", "[]", "{}", "[s1, s1]", "10ms ms", "!!python/object:os.system x", "x" * 300, "~", "yes",
           "-5ms", "101%", "0Mbit", "1e3ms", "0x10", "'10.0.0.1/33'", "&a [*a]", "e1", "h9"]
EDITS = 3000 if LONG else 300
CLI_FILES = 100 if LONG else 8
_FIELD_MESSAGE = re.compile(r"^(YAML (syntax )?error|the file is empty|[A-Za-z_][\w.\[\]@\- ]*( \([^)]*\))?: )")


# the edits issue 14 found, first in every run: (source, old text, new text)
KNOWN = [("mesh-echo.yaml", "  - {between: [cp, s1]}\n", ""), ("mesh-echo.yaml", "  - {between: [e2, s1]}\n", ""),
         ("mesh-echo.yaml", "  - {between: [h0, s1]}\n", ""), ("mesh-echo.yaml", "host: cp}", "host: s1}"),
         ("mesh-echo.yaml", "clients: [h0]", "clients: [s1]"), ("mesh-echo.yaml", "members: [e1,", "members: [s1,"),
         ("line3.yaml", "delay: 10ms", "bw: .inf"), ("line3.yaml", "delay: 10ms", "queue: 10000000000000"),
         ("line3.yaml", "delay: 10ms", "delay: 100000s"), ("line3.yaml", "delay: 10ms", "delay: 1e30s"),
         ("line3.yaml", "delay: 10ms", "delay: .nan")]


def _mutants(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(name, text, edit) for the KNOWN edits, then seeded single edits of the shipped
    topologies, n in all."""
    texts = {s: (REPO / "topologies" / s).read_text() for s in SOURCES}
    out = []
    for src, old, new_text in KNOWN:
        assert old in texts[src], (src, old)
        out.append((f"{src}:known", texts[src].replace(old, new_text, 1), f"{old.strip()} -> {new_text.strip()}"))
    while len(out) < n:
        src = rng.choice(SOURCES)
        lines = texts[src].splitlines()
        body = [i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
        i = rng.choice(body)
        kind = rng.choice(["delete", "duplicate", "value", "value", "switch"])
        new = list(lines)
        if kind == "delete":
            del new[i]
        elif kind == "duplicate":
            new.insert(i, lines[i])
        elif kind == "value":
            m = list(re.finditer(r"(:\s*|\[|,\s*)([^\s,\[\]{}:#][^,\[\]{}#]*?)(?=\s*[,\]}]|\s*$|\s+#)", lines[i]))
            if not m:
                continue
            g = rng.choice(m)
            new[i] = lines[i][:g.start(2)] + rng.choice(HOSTILE) + lines[i][g.end(2):]
        else:
            hosts = re.findall(r"\b(h\d+|e\d+|cp)\b", lines[i])
            if not hosts:
                continue
            new[i] = re.sub(rf"\b{rng.choice(hosts)}\b", "s1", lines[i], count=1)
        if new != lines:
            shown = new[i] if kind != "delete" else lines[i]
            out.append((f"{src}:{i + 1}:{kind}", "\n".join(new) + "\n", f"{kind} line {i + 1}: {shown}"))
    return out


def _check(name: str, text: str) -> str:
    """'ok' or 'refused'; raises AssertionError when the loader misbehaves."""
    try:
        topo = parse_topology(text, "broken.yaml")
    except TopologyError as e:
        assert e.file == "broken.yaml" and e.line is not None, (name, str(e))
        assert 1 <= e.line <= text.count("\n") + 1, (name, str(e))
        assert _FIELD_MESSAGE.match(e.message), (name, e.message)
        return "refused"
    for lk in topo.links:                    # what loads, a backend can honour
        for sh in (lk.shape1, lk.shape2):
            assert 0 <= sh.delay_ms <= 3_600_000 and 0 <= sh.jitter_ms <= 3_600_000, (name, sh)
            assert sh.bw_mbit is None or 0 < sh.bw_mbit <= 1e6, (name, sh)
            assert 1 <= sh.queue_pkts < 2**32, (name, sh)
    mesh = topo.sections.get("mesh")
    if mesh is not None:
        linked = {n for lk in topo.links for n in (lk.node1, lk.node2)}
        used = {mesh.control_plane, *mesh.registry.members, *mesh.clients, *(i.host for i in mesh.instances)}
        assert used <= linked, (name, sorted(used - linked))
    return "ok"


def test_every_broken_topology_is_refused_at_its_line_or_loads_sound():
    counts = {"ok": 0, "refused": 0}
    for name, text, _ in _mutants(random.Random(f"{SEED}-topology"), EDITS):
        counts[_check(name, text)] += 1
    assert "mesh" in parse_topology((REPO / "topologies" / "mesh-echo.yaml").read_text()).sections
    record("topology_fuzz", edits=EDITS, **counts)
    assert counts["refused"] > EDITS // 4, counts        # the campaign really broke files


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="runs `minimesh up`: root")
def test_cli_exits_2_at_file_line_and_creates_nothing(tmp_path, request):
    if not isolated():                  # a file that loaded would build a net: keep it private
        return rerun_isolated(request.node.nodeid)
    state = Path("/run/minimesh")
    before = census(state)
    refused = []
    for name, text, edit in _mutants(random.Random(f"{SEED}-topology"), EDITS):
        try:
            parse_topology(text, "x.yaml")
        except TopologyError as e:
            refused.append((name, text, e.line, edit))
        if len(refused) >= CLI_FILES:
            break
    bad = []
    for k, (name, text, line, edit) in enumerate(refused):
        path = tmp_path / f"broken{k}.yaml"
        path.write_text(text)
        p = subprocess.run(minimesh_cmd("up", str(path)), cwd=REPO, env=minimesh_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 2 or not p.stderr.startswith(f"{path}:{line}: ") or "Traceback" in p.stderr:
            bad.append((name, edit, p.returncode, p.stderr[-400:]))
    left = census(state).leftovers(before)
    record("topology_cli", files=len(refused), bad=len(bad), leftovers=left)
    assert not bad and not left, (bad, left)
