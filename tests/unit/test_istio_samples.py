"""Istio's own Bookinfo networking samples, byte for byte (tests/data/istio, Apache-2.0, the
Istio Authors), taken as Istio takes them: empty documents skipped, every apiVersion,
deprecated fields applied with IST0004 warnings, kubectl's apply/delete/get semantics, and
DestinationRule ``tls.mode`` (no root; the effects on a running Bookinfo are in
tests/integration/test_mesh_bookinfo_samples.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from testbed.cli.mesh import analyze_paths, cli_delete, format_get, parse_get
from testbed.cli.shell_commands import CLIUsageError
from testbed.mesh.model import MeshState, ServiceSpec, VersionSpec
from testbed.mesh.pilot import resources as xds
from testbed.mesh.pilot.resources import NodeInfo, XdsSource
from testbed.mesh.pilot.server import ApplyRejected, Pilot
from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.rules.yamldoc import load_documents

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/data/istio"
SAMPLES = DATA / "bookinfo"
TOPO = str(REPO / "topologies/bookinfo.yaml")
NET = SAMPLES / "networking"
OLD = SAMPLES / "networking@062bdf2"

# file -> what `minimesh analyze topologies/bookinfo.yaml destination-rule-all.yaml FILE` says:
# "clean" (no Error), or the Error codes and why the sample cannot fit minimesh's Bookinfo
FITS = ("virtual-service-all-v1.yaml", "virtual-service-reviews-test-v2.yaml",
        "virtual-service-reviews-50-v3.yaml", "virtual-service-reviews-80-20.yaml",
        "virtual-service-reviews-90-10.yaml", "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-reviews-v2-v3.yaml", "virtual-service-reviews-v3.yaml",
        "virtual-service-ratings-test-delay.yaml", "virtual-service-ratings-test-abort.yaml",
        "destination-rule-all.yaml", "destination-rule-all-mtls.yaml", "destination-rule-reviews.yaml",
        "fault-injection-details-v1.yaml",
        # analyze clean, but route to versions minimesh's Bookinfo does not run (MongoDB, MySQL,
        # a VM, details v2): they apply, and those requests get 503 as in an Istio without them
        "virtual-service-ratings-db.yaml", "virtual-service-ratings-mysql.yaml",
        "virtual-service-ratings-mysql-vm.yaml", "virtual-service-details-v2.yaml")
DOES_NOT_FIT = {"bookinfo-gateway.yaml": {"MM0002"}, "bookinfo-gateway2.yaml": {"MM0002"},
                "certmanager-gateway.yaml": {"MM0002"}, "egress-rule-google-apis.yaml": {"MM0002"}}


def test_samples_are_byte_for_byte_copies_with_attribution():
    sources = json.loads((SAMPLES / "SOURCES.json").read_text())
    files = sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*.yaml"))
    assert files == sorted(sources)
    for rel, src in sources.items():
        data = (SAMPLES / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (src["bytes"], src["sha256"]), rel
        assert src["repository"] == "istio/istio" and len(src["commit"]) == 40
        assert src["path"] == "samples/bookinfo/networking/" + Path(rel).name
    # the shapes that made minimesh stumble are really there
    assert (NET / "destination-rule-all.yaml").read_bytes().endswith(b"---\n")
    assert not (NET / "fault-injection-details-v1.yaml").read_bytes().endswith(b"\n")
    assert b"percent: 100\n" in (OLD / "virtual-service-ratings-test-delay.yaml").read_bytes()
    assert b"percent: 100\n" in (OLD / "virtual-service-ratings-test-abort.yaml").read_bytes()
    licence = (DATA / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    notice = (DATA / "NOTICE").read_text() + (DATA / "README.md").read_text()
    assert "Istio Authors" in notice and "SOURCES.json" in notice


def test_every_sample_file_is_listed_with_its_result():
    assert set(FITS) | set(DOES_NOT_FIT) == {p.name for p in NET.glob("*.yaml")}


@pytest.mark.parametrize("name", FITS)
def test_fitting_samples_analyze_without_errors(name):
    base = [TOPO, str(NET / "destination-rule-all.yaml")]
    lines, code = analyze_paths(base + [str(NET / name)])
    assert code == 0, lines
    assert not [ln for ln in lines if ln.startswith("Error")]


@pytest.mark.parametrize("name", sorted(DOES_NOT_FIT))
def test_samples_that_cannot_fit_are_refused_with_a_reason(name):
    lines, code = analyze_paths([TOPO, str(NET / name)])
    assert code == 1
    codes = {ln.split("[")[1].split("]")[0] for ln in lines if ln.startswith("Error")}
    assert codes == DOES_NOT_FIT[name]
    assert any("not supported" in ln or "unsupported kind" in ln for ln in lines)


def test_empty_documents_are_skipped_like_kubectl():
    text = "---\n# only a comment\n---\napiVersion: v\nkind: K\n---\n---\n"
    assert [d.plain()["kind"] for d in load_documents(text)] == ["K"]
    rules, msgs = parse_rules((NET / "virtual-service-all-v1.yaml").read_text(), "all.yaml")
    assert [r.name for r in rules] == ["productpage", "reviews", "ratings", "details"] and msgs == []


@pytest.mark.parametrize("api", ["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1",
                                 "networking.istio.io/v1"])
def test_every_networking_api_version_is_accepted(api):
    text = (f"apiVersion: {api}\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n"
            "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n---\n"
            f"apiVersion: {api}\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: reviews}}\n")
    rules, msgs = parse_rules(text, "v.yaml")
    assert len(rules) == 2 and msgs == []


@pytest.mark.parametrize("api, ok", [("security.istio.io/v1beta1", True), ("security.istio.io/v1", True),
                                     ("security.istio.io/v1alpha1", False)])
def test_security_api_versions(api, ok):
    rules, msgs = parse_rules(f"apiVersion: {api}\nkind: PeerAuthentication\nmetadata: {{name: d}}\n"
                              "spec: {mtls: {mode: STRICT}}\n", "pa.yaml")
    assert bool(rules) is ok and (msgs == []) is ok


@pytest.mark.parametrize("fault, field", [("delay", "fixedDelay: 7s"), ("abort", "httpStatus: 500")])
def test_deprecated_percent_applies_with_the_same_meaning_and_warns(fault, field):
    old = (OLD / f"virtual-service-ratings-test-{fault}.yaml").read_text()
    rules, msgs = parse_rules(old, "old.yaml")
    new, new_msgs = parse_rules((NET / f"virtual-service-ratings-test-{fault}.yaml").read_text(), "n.yaml")
    assert [h.fault for h in rules[0].http] == [h.fault for h in new[0].http] and new_msgs == []
    assert [(m.code, m.level, m.line) for m in msgs] == [("IST0004", "Warning", 15)]
    assert f"spec.http[0].fault.{fault}.percent is deprecated" in msgs[0].text
    f = rules[0].http[0].fault
    assert (f.delay_percent, f.delay_ms) == (100.0, 7000) if fault == "delay" else \
        (f.abort_percent, f.abort_status) == (100.0, 500)
    # percentage wins when both are given (as in Pilot); 37 % stays 37 %
    both, _ = parse_rules(old.replace("percent: 100", "percent: 37"), "b.yaml")
    pct = both[0].http[0].fault
    assert (pct.delay_percent if fault == "delay" else pct.abort_percent) == 37.0
    assert field.split(":")[0] in old


def test_other_deprecated_fields_istio_still_accepts():
    text = """apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    mirror: {host: ratings}
    mirror_percent: 25
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {outlierDetection: {consecutiveErrors: 3, interval: 1s}}
"""
    rules, msgs = parse_rules(text, "d.yaml")
    assert [m.code for m in msgs] == ["IST0004", "IST0004"]
    assert rules[0].http[0].mirror_percent == 25.0
    od = rules[1].traffic_policy.outlier
    assert (od.consecutive_gateway, od.consecutive_5xx) == (3, None)  # Pilot: gateway errors only


SVCS = (ServiceSpec("reviews", 9080, (VersionSpec("v1"), VersionSpec("v2"))), ServiceSpec("ratings", 9080))
NODE = NodeInfo.make("10.0.0.2", "ratings-v1-0", "ratings", labels={"app": "ratings", "version": "v1"},
                     app_port=18080)


def _dr(mode: str, name: str = "reviews") -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\n"
            f"spec:\n  host: {name}\n  trafficPolicy: {{tls: {{mode: {mode}}}}}\n"
            "  subsets: [{name: v1, labels: {version: v1}}]\n")


def _tls_clusters(rules_text: str, auto_mtls: bool = False) -> set[str]:
    rules, msgs = parse_rules(rules_text, "r.yaml")
    assert not [m for m in msgs if m.level == "Error"], msgs
    st = MeshState(SVCS, (), tuple(rules), auto_mtls=auto_mtls)
    return {c["name"] for c in xds.build_clusters(st, NODE, XdsSource()) if "transport_socket" in c}


def test_destination_rule_istio_mutual_and_disable():
    assert _tls_clusters("") == set()                           # auto mTLS off, no security rule
    assert _tls_clusters(_dr("ISTIO_MUTUAL")) == {"outbound|9080||reviews", "outbound|9080|v1|reviews"}
    assert _tls_clusters("", auto_mtls=True) == {"outbound|9080||reviews", "outbound|9080||ratings"}
    assert _tls_clusters(_dr("DISABLE"), auto_mtls=True) == {"outbound|9080||ratings"}
    st = MeshState(SVCS, (), tuple(parse_rules(_dr("ISTIO_MUTUAL"), "r.yaml")[0]))
    inbound = [lst for lst in xds.build_listeners(st, NODE, XdsSource())
               if lst.get("traffic_direction") == "INBOUND"]
    assert len(inbound[0]["filter_chains"]) == 2                 # PERMISSIVE: TLS + plaintext
    _, msgs = parse_rules(_dr("SIMPLE"), "s.yaml")
    assert [(m.code, m.line) for m in msgs] == [("MM0002", 6)] and "ISTIO_MUTUAL" in msgs[0].text


def test_mtls_sample_applies_to_pilot_and_every_cluster_originates_mtls():
    services = (ServiceSpec("productpage", 9080), ServiceSpec("details", 9080),
                ServiceSpec("reviews", 9080, tuple(VersionSpec(v) for v in ("v1", "v2", "v3"))),
                ServiceSpec("ratings", 9080))
    p = Pilot(services)
    warnings = p.apply_text((NET / "destination-rule-all-mtls.yaml").read_text(), "mtls.yaml")
    assert {m.code for m in warnings} == {"MM0006"}               # subsets with no instance here
    clusters = xds.build_clusters(p.state, NODE, XdsSource())
    outbound = [c for c in clusters if c["name"].startswith("outbound")]
    assert outbound and all("transport_socket" in c for c in outbound)


def test_apply_replaces_like_kubectl_and_delete_and_manifests():
    p = Pilot(SVCS)
    p.apply_text(_dr("ISTIO_MUTUAL"), "a.yaml")
    p.apply_text(_dr("DISABLE"), "b.yaml")                       # same kind/namespace/name: replaced
    assert len(p.state.rules) == 1 and p.state.rules[0].traffic_policy.tls_mode == "DISABLE"
    man = p.manifests[("DestinationRule", "default", "reviews")]["manifest"]
    assert man["spec"]["trafficPolicy"] == {"tls": {"mode": "DISABLE"}}
    p.apply_texts([(_dr("ISTIO_MUTUAL"), "c.yaml"), (_dr("DISABLE"), "d.yaml")])   # the later wins
    assert p.state.rules[0].traffic_policy.tls_mode == "DISABLE"
    gen = p.generation
    deleted, missing = p.delete_texts([(_dr("x") + "---\n" + _dr("x", "ratings"), "del.yaml")])
    assert deleted == ["DestinationRule/reviews"] and p.state.rules == () and p.generation == gen + 1
    assert [(m.code, m.line) for m in missing] == [("NotFound", 9)] and "ratings not found" in missing[0].text
    with pytest.raises(ApplyRejected):
        p.delete_texts([("a: [", "bad.yaml")])
    assert p.manifests == {}


class _FakeMesh:
    def __init__(self, rules: list[dict]):
        self._rules = rules

    def rules(self) -> list[dict]:
        return self._rules

    def delete_files(self, paths):
        return ["VirtualService/reviews"], []


RULES = [{"kind": "VirtualService", "namespace": "default", "name": "reviews", "file": "f", "line": 1,
          "age_s": 75.0, "manifest": yaml.safe_load((NET / "virtual-service-reviews-test-v2.yaml").read_text())},
         {"kind": "DestinationRule", "namespace": "default", "name": "reviews", "file": "f", "line": 1,
          "age_s": 3700.0, "manifest": {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                                        "metadata": {"name": "reviews"}, "spec": {"host": "reviews"}}}]


def test_get_prints_what_kubectl_prints():
    assert parse_get("vs reviews -o yaml") == ("virtualservice", "reviews", "yaml", False)
    assert parse_get("destinationrules -A") == ("destinationrule", None, None, True)
    table = format_get(RULES, "virtualservice", None, None, False)
    assert table.splitlines() == ['NAME      GATEWAYS   HOSTS         AGE', 'reviews              ["reviews"]   75s']
    assert format_get(RULES, "destinationrule", None, None, False).splitlines()[1].split() == \
        ["reviews", "reviews", "61m"]
    one = yaml.safe_load(format_get(RULES, "virtualservice", "reviews", "yaml", False))
    assert one["spec"]["http"][0]["match"][0]["headers"]["end-user"] == {"exact": "jason"}
    assert one["metadata"] == {"name": "reviews", "namespace": "default"}
    listing = json.loads(format_get(RULES, "destinationrule", None, "json", False))
    assert listing["kind"] == "List" and listing["items"][0]["spec"] == {"host": "reviews"}
    assert format_get(RULES, "peerauthentication", None, None, False) == "No resources found in default namespace.\n"
    with pytest.raises(CLIUsageError, match='NotFound.*"nope" not found'):
        format_get(RULES, "virtualservice", "nope", None, False)
    for bad in ("", "gateway", "vs a b", "vs -o xml"):
        with pytest.raises(CLIUsageError):
            parse_get(bad)


def test_delete_command_prints_kubectls_lines(tmp_path):
    f = tmp_path / "vs.yaml"
    f.write_text("x: 1\n")
    out = cli_delete(_FakeMesh(RULES), f"-f {f}")
    assert out == 'virtualservice.networking.istio.io "reviews" deleted\n'
    with pytest.raises(CLIUsageError, match="usage"):
        cli_delete(_FakeMesh(RULES), str(f))
    with pytest.raises(CLIUsageError, match="no such file"):
        cli_delete(_FakeMesh(RULES), "-f /nonexistent.yaml")
