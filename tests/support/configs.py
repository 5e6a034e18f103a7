"""Config templates in tests/configs: ``${NAME}`` placeholders filled per test (only
that form is replaced, so a regex ``$`` in a config stays as it is).

Placeholders used: ``${LISTEN_PORT}``, ``${ADMIN_PORT}``, ``${UPSTREAM_<X>_PORT}``.
Every ``tests/configs/*.yaml`` (filled) is one real Envoy accepts; the ones in
``tests/configs/invalid/`` are rejected by real Envoy.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from tests.support.ports import free_ports

__all__ = ["CONFIG_DIR", "INVALID_DIR", "placeholders", "render", "render_free", "valid_configs",
           "invalid_configs"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
INVALID_DIR = CONFIG_DIR / "invalid"
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


def valid_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.yaml"))


def invalid_configs() -> list[Path]:
    return sorted(INVALID_DIR.glob("*.yaml"))


def placeholders(text: str) -> list[str]:
    return sorted(set(_PLACEHOLDER.findall(text)))


def render(name_or_path: str | Path, values: Mapping[str, int | str]) -> str:
    """The template filled with ``values``; a missing placeholder is an error."""
    path = Path(name_or_path)
    if not path.is_absolute() and not path.exists():
        path = CONFIG_DIR / path
    text = path.read_text()
    missing = [p for p in placeholders(text) if p not in values]
    if missing:
        raise KeyError(f"{path}: no value for placeholder(s) {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render_free(path: Path) -> str:
    """The template with every placeholder set to a distinct free port (for validation)."""
    names = placeholders(path.read_text())
    return render(path, dict(zip(names, free_ports(len(names)), strict=True)))
