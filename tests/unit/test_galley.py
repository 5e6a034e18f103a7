"""Galley: cross-resource analysis with Istio-style codes and file:line."""
from pathlib import Path

from testbed.mesh.rules.galley import analyze, analyze_files, short_host
from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.model import ServiceSpec, VersionSpec

REVIEWS = ServiceSpec("reviews", 9080, (VersionSpec("v1"), VersionSpec("v2"), VersionSpec("v3")))
RATINGS = ServiceSpec("ratings", 9080, (VersionSpec("v1"),))
DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
"""


def codes(text, services=(REVIEWS, RATINGS)):
    rules, msgs = parse_rules(text, "r.yaml")
    assert msgs == []
    return [(m.code, m.level, m.line) for m in analyze(list(services), rules)], \
        analyze(list(services), rules)


def vs(http: str, hosts="[reviews]") -> str:
    return DR + f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: {hosts}
  http:
{http}"""


def test_clean_canary_has_no_messages():
    got, _ = codes(vs("""  - route:
    - destination: {host: reviews, subset: v1}
      weight: 95
    - destination: {host: reviews.default.svc.cluster.local, subset: v2}
      weight: 5
"""))
    assert got == []


def test_undefined_subset_and_unknown_host_are_ist0101_with_lines():
    got, msgs = codes(vs("""  - route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: nosuch}
""", hosts="[reviews, ghost]"))
    assert got == [("IST0101", "Error", 14), ("IST0101", "Error", 17), ("IST0130", "Warning", 18),
                   ("IST0101", "Error", 19)]
    assert '"reviews+v3"' in msgs[1].text and "defined: v1, v2" in msgs[1].text
    assert "'nosuch'" in msgs[3].text and "ratings, reviews" in msgs[3].text
    assert msgs[1].format().startswith("Error [IST0101] (VirtualService reviews) r.yaml:17 ")


def test_weights_must_sum_to_100():
    got, msgs = codes(vs("""  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
      weight: 20
"""))
    assert got == [("MM0001", "Error", 16)] and "90, 20" in msgs[0].text
    got, _ = codes(vs("""  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v2}
"""))
    assert got == [("MM0001", "Error", 16)]


def test_rule_after_catch_all_is_unreachable_and_duplicate_match_is_ineffective():
    got, msgs = codes(vs("""  - match: [{headers: {user-agent: {exact: a}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{headers: {user-agent: {exact: a}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /x}}]
    route: [{destination: {host: reviews, subset: v2}}]
"""))
    assert got == [("IST0131", "Warning", 18), ("IST0130", "Warning", 21)]


def test_port_subset_labels_duplicates_and_conflicts():
    text = vs("""  - route: [{destination: {host: reviews, port: {number: 1234}}}]
""") + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1, labels: {version: v7}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews2}
spec: {host: reviews}
"""
    got, msgs = codes(text)
    assert got == [("MM0004", "Error", 16), ("IST0109", "Error", 22), ("MM0005", "Error", 32),
                   ("MM0006", "Warning", 32), ("MM0007", "Warning", 34)]


def test_without_services_host_checks_are_skipped():
    rules, _ = parse_rules(vs("  - route: [{destination: {host: ghost}}]\n"), "r.yaml")
    assert analyze(None, rules) == []


def test_short_host():
    assert short_host("reviews") == short_host("reviews.default") == \
        short_host("reviews.default.svc.cluster.local") == "reviews"
    assert short_host("www.example.com") == "www.example.com"


TOPO = """name: t
mesh:
  services:
    reviews:
      port: 9080
      run: builtin:echo
      versions:
        v1: {replicas: 1}
        v2: {replicas: 1, hosts: [h3]}
  rules:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets: [{name: v1, labels: {version: v1}}]
"""


def test_analyze_files_topology_plus_rules(tmp_path: Path):
    topo = tmp_path / "topo.yaml"
    topo.write_text(TOPO)
    good = tmp_path / "good.yaml"
    good.write_text(vs("  - route: [{destination: {host: reviews, subset: v1}}]\n")
                    .replace(DR, ""))
    msgs, rc = analyze_files([str(topo), str(good)])
    assert (msgs, rc) == ([], 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   "metadata: {name: x}\nspec:\n  hosts: [ratings]\n"
                   "  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n")
    msgs, rc = analyze_files([str(topo), str(bad), str(tmp_path / "missing.yaml")])
    assert rc == 1
    assert [(m.code, Path(m.file).name, m.line) for m in msgs] == [
        ("IST0101", "bad.yaml", 5), ("IST0101", "bad.yaml", 6), ("MM0009", "missing.yaml", 0)]


def test_rules_without_topology_and_topology_without_mesh(tmp_path: Path):
    rules = tmp_path / "r.yaml"
    rules.write_text(vs("  - route: [{destination: {host: ghost}}]\n").replace(DR, ""))
    msgs, rc = analyze_files([str(rules)])
    assert rc == 0 and [(m.code, m.level) for m in msgs] == [("MM0010", "Info")]
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: lan\nhosts: {h1: {}}\n")
    msgs, rc = analyze_files([str(plain), str(rules)])
    assert rc == 1 and [m.code for m in msgs] == ["IST0101", "IST0101"]


def test_topology_service_errors(tmp_path: Path):
    topo = tmp_path / "topo.yaml"
    topo.write_text("mesh:\n  services:\n    a: {port: http}\n"
                    "    b:\n      port: 80\n      versions:\n        v1: {replicas: many}\n")
    msgs, rc = analyze_files([str(topo)])
    assert rc == 1 and [(m.code, m.line) for m in msgs] == [("MM0008", 3), ("MM0008", 7)]
    assert "replicas" in msgs[1].text
