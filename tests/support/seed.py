"""The tutorial's front-proxy YAML, as the tests use it.

The repo carries a byte-for-byte copy (topologies/front-proxy/envoy.yaml) so tests do not
depend on where the tutorial lives; `seed_path()` finds the tutorial itself (../shared
beside the checkout, as CI lays it out, or /work/shared) so a test can check the copy.
"""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
COPY = ROOT / "topologies" / "front-proxy" / "envoy.yaml"
_SEED_NAME = "seeds/000_4812a8856aca79f2.txt"


def seed_yaml() -> str:
    return COPY.read_text()


def seed_path() -> pathlib.Path | None:
    for base in (ROOT.parent / "shared", pathlib.Path("/work/shared")):
        if (base / _SEED_NAME).is_file():
            return base / _SEED_NAME
    return None


def yaml_in_seed(path: pathlib.Path) -> str:
    return re.search(r"```\n(static_resources:.*?)```", path.read_text(), re.S).group(1)
