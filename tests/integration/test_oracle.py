"""Real Envoy is the oracle for configuration: every tests/configs/*.yaml is accepted by
``envoy --mode validate`` and by ``python -m proxy --mode validate``; every
tests/configs/invalid/*.yaml is rejected by both; the seed's v2-style front-proxy YAML is
rejected by Envoy 1.40 (it dropped ``config:``) and accepted by minimesh-proxy.
Also checks that the differential scenarios show, through real Envoy, what they state."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.configs import invalid_configs, render_free, valid_configs
from tests.support.differential import check_expectations, envoy_outcomes
from tests.support.procs import REPO, validate
from tests.support.scenarios import SCENARIOS

SEED = REPO / "topologies" / "front-proxy" / "envoy.yaml"
SEED_V3 = REPO / "topologies" / "front-proxy" / "envoy-v3.yaml"  # no placeholders


def _filled(tmp_path: Path, path: Path) -> Path:
    out = tmp_path / path.name
    out.write_text(render_free(path))
    return out


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_config_sets_are_not_empty():
    assert len(valid_configs()) >= 4 and len(invalid_configs()) >= 5


@pytest.mark.parametrize("config", valid_configs(), ids=_ids(valid_configs()))
def test_envoy_accepts(config, tmp_path, envoy_bin):
    r = validate("envoy", _filled(tmp_path, config))
    assert r.returncode == 0 and " OK" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("config", invalid_configs(), ids=_ids(invalid_configs()))
def test_envoy_rejects(config, tmp_path, envoy_bin):
    r = validate("envoy", _filled(tmp_path, config))
    assert r.returncode != 0, f"real Envoy accepted {config.name}; move it out of invalid/"


@pytest.mark.parametrize("config", valid_configs(), ids=_ids(valid_configs()))
def test_minimesh_accepts(config, tmp_path, minimesh_proxy):
    r = validate("minimesh", _filled(tmp_path, config))
    assert r.returncode == 0, f"minimesh-proxy rejected {config.name} (real Envoy accepts it):\n" + r.stderr[-2000:]


@pytest.mark.parametrize("config", invalid_configs(), ids=_ids(invalid_configs()))
def test_minimesh_rejects(config, tmp_path, minimesh_proxy):
    r = validate("minimesh", _filled(tmp_path, config))
    why = config.read_text().splitlines()[0]
    assert r.returncode != 0, f"minimesh-proxy accepted {config.name} ({why}); real Envoy rejects it"
    assert "Traceback" not in r.stderr, f"error is a traceback, not a message:\n{r.stderr[-2000:]}"
    assert r.stderr.strip() or r.stdout.strip(), "rejected without saying why"


def test_seed_v2_yaml_envoy_140_rejects_it(envoy_bin):
    r = validate("envoy", SEED)
    assert r.returncode != 0 and "config" in r.stdout + r.stderr


def test_seed_v2_yaml_minimesh_accepts_it(minimesh_proxy):
    r = validate("minimesh", SEED)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("kind", ["envoy", "minimesh"])
def test_seed_v3_translation_accepted(kind, request):
    request.getfixturevalue("envoy_bin" if kind == "envoy" else "minimesh_proxy")
    r = validate(kind, SEED_V3)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_envoy_shows_scenario_expectations(scenario, envoy_bin):
    """The harness itself: real Envoy's outcomes are what each scenario states."""
    assert check_expectations(scenario, envoy_outcomes(scenario)) == []
