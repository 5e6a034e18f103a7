"""``mesh.security`` parsing and the deploy-side helpers (no root, no network): defaults
(Citadel in every mesh, as in Istio; ``citadel: false`` opts out), errors at file:line, the
bootstrap metadata and key log paths, and the refusal of the rules that need Citadel by a
mesh that opted out (MM0120, naming the opt-out)."""
from __future__ import annotations

import pytest

import testbed.mesh.spec  # noqa: F401  (registers mesh:)
from testbed.mesh.deploy.security import MeshSecurity
from testbed.mesh.pilot.daemon import _refuse_security
from testbed.mesh.pilot.server import ApplyRejected
from testbed.mesh.spec import SecuritySpec
from testbed.topology.load import parse_topology
from testbed.topology.spec import TopologyError

BASE = """\
name: t
hosts: {h1: {}, e1: {}, cp: {}}
switches: {s1: {}}
links: [{between: [h1, s1]}, {between: [e1, s1]}, {between: [cp, s1]}]
mesh:
  registry: {members: [e1]}
  control_plane: {host: cp}
  services: {echo: {port: 8080, run: "builtin:echo"}}
"""
STRICT = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""


def security(extra: str = "", file: str = "<t>"):
    return parse_topology(BASE + extra, file).sections["mesh"].security


def test_citadel_runs_in_every_mesh_unless_opted_out():
    assert security() == SecuritySpec(citadel=True, auto_mtls=False)
    assert security("  security: {}\n") == SecuritySpec(citadel=True)
    assert security("  security: {citadel: false}\n").citadel is False
    assert security("  security: {auto_mtls: true}\n").auto_mtls is True
    s = security("  security: {cert_ttl_s: 30, renew_fraction: 0.25, keylog: true}\n")
    assert (s.citadel, s.cert_ttl_s, s.renew_fraction, s.keylog) == (True, 30.0, 0.25, True)


DR_MTLS = """\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: echo}
spec: {host: echo, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
"""


@pytest.mark.parametrize("rule, kind", [(STRICT, "PeerAuthentication"), (DR_MTLS, "DestinationRule")])
def test_a_listed_rule_that_needs_citadel_conflicts_with_the_opt_out(tmp_path, rule, kind):
    (tmp_path / "r.yaml").write_text(rule)
    topo = tmp_path / "t.yaml"
    topo.write_text(BASE + "  rules: [r.yaml]\n")
    from testbed.topology.load import load_topology
    assert load_topology(str(topo)).sections["mesh"].security.citadel is True
    topo.write_text(BASE + "  rules: [r.yaml]\n  security: {citadel: false}\n")
    with pytest.raises(TopologyError) as e:
        load_topology(str(topo))
    assert f"{topo}:10:" in str(e.value) and f"holds a {kind}" in str(e.value)


def test_auto_mtls_needs_citadel():
    with pytest.raises(TopologyError) as e:
        security("  security: {citadel: false, auto_mtls: true}\n")
    assert str(e.value).startswith("<t>:9:") and "auto_mtls: true needs Citadel" in str(e.value)


@pytest.mark.parametrize("extra, words", [
    ("  security: {cert_ttl_s: 0}\n", "cert_ttl_s: 0 must be a number from 1 to 86400"),
    ("  security: {renew_fraction: 1.5}\n", "renew_fraction: 1.5 must be a number from 0.05 to 0.95"),
    ("  security: {keylog: maybe}\n", "keylog: 'maybe' is not a boolean"),
    ("  security: {auto_mtls: 1}\n", "auto_mtls: 1 is not a boolean"),
    ("  security: {trust_domain: example.org}\n", "allowed: cluster.local"),
    ("  security: {ca: x}\n", "unknown field 'ca'"),
])
def test_bad_values_are_errors_at_their_line(extra, words):
    with pytest.raises(TopologyError) as e:
        security(extra)
    assert str(e.value).startswith("<t>:9:") and words in str(e.value), str(e.value)


def test_service_port_15012_is_reserved_for_citadel():
    with pytest.raises(TopologyError) as e:
        parse_topology(BASE.replace("8080", "15012"), "<t>")
    assert "15012" in str(e.value) and "not usable" in str(e.value)


def test_metadata_and_keylog_paths(tmp_path):
    sec = MeshSecurity(SecuritySpec(citadel=True, cert_ttl_s=60, keylog=True), tmp_path, "10.0.0.9")
    md = sec.metadata("echo-v1-0", "echo")
    assert md["CITADEL"] == "http://10.0.0.9:15012" and md["SERVICE_ACCOUNT"] == "echo"
    assert md["CERT_TTL_S"] == 60 and md["KEYLOG"] == str(tmp_path / "keylog" / "echo-v1-0.keys")
    sec.metadata("client@h0", "client")
    assert sorted(sec.keylogs()) == ["client@h0", "echo-v1-0"]
    assert all(p.exists() for p in sec.keylogs().values())
    assert "--state-dir" in sec.argv() and str(tmp_path / "citadel") in sec.argv()
    assert sec.metadata("other-v1-0", "other", kind="envoy") == {}     # Envoy: SDS agent instead
    argv = sec.sds_agent_argv("other-v1-0", "sidecar~10.0.0.3~other-v1-0~other", "other")
    assert argv[1:3] == ["-m", "testbed.mesh.deploy.security"] and str(tmp_path / "sds" / "other-v1-0") in argv
    off = MeshSecurity(SecuritySpec(citadel=False, keylog=True), tmp_path, "10.0.0.9")
    assert off.metadata("echo-v1-0", "echo", kind="envoy") == {} and off.keylogs() == {}


def test_a_mesh_that_opted_out_of_citadel_refuses_the_rules_that_need_it():
    with pytest.raises(ApplyRejected) as e:
        _refuse_security([{"name": "s.yaml", "text": STRICT + "---\n" + DR_MTLS + "---\n"}])
    msgs = [m.format() for m in e.value.messages]
    assert msgs[0].startswith("Error [MM0120] (PeerAuthentication default) s.yaml:1 ") and "needs Citadel" in msgs[0]
    assert msgs[1].startswith("Error [MM0120] (DestinationRule echo) s.yaml:6 tls.mode ISTIO_MUTUAL needs")
    assert all("mesh.security.citadel: false" in m for m in msgs)     # names the opt-out
    _refuse_security([{"name": "vs.yaml", "text": "kind: VirtualService\n"}])   # traffic rules pass
    _refuse_security([{"name": "dr.yaml", "text": DR_MTLS.replace("ISTIO_MUTUAL", "DISABLE")}])
