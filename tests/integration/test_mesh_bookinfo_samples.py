"""Istio's own Bookinfo samples (tests/data/istio, byte for byte) on minimesh's Bookinfo
(topologies/bookinfo.yaml, node names prefixed per run), with the effects Istio's task pages
describe (root):

* request routing: ``virtual-service-all-v1.yaml`` then ``virtual-service-reviews-test-v2.yaml``:
  ``end-user: jason`` gets reviews v2 (black stars), everyone else v1 (no stars);
* traffic shifting: ``-80-20`` (v1/v2) and ``-50-v3`` (v1/v3), 1000 requests each through
  productpage's sidecar; the observed share must have the rule's weight inside its 99.9 %
  Wilson score interval (z = 3.29: a correct mesh fails this about once in 1000 runs);
* fault injection: ``virtual-service-ratings-test-delay.yaml`` (7 s for jason): reviews v2 waits
  (its 10 s timeout) but productpage gives up after 3 s + 1 retry (~6 s) and shows "Sorry, product
  reviews are currently unavailable", as the task finds; the same with the old ``v1alpha3`` file
  and its deprecated ``percent``; ``-abort.yaml`` (HTTP 500 for jason): the page comes at once,
  "Ratings service is currently unavailable";
* ``destination-rule-all-mtls.yaml`` applied live to this mesh (which has no ``security:``
  section: Citadel runs in every mesh): requests still succeed, now over mTLS (the sidecars'
  ``ssl.handshake`` counters grow);
* a STRICT PeerAuthentication and an AuthorizationPolicy applied live to the same mesh (no
  restart): a host without a sidecar is refused, only productpage may call reviews (403 for
  the client sidecar); ``delete -f`` undoes both;
* ``delete -f`` and ``get`` as kubectl has them.
"""
from __future__ import annotations

import json
import math
import random
import re
import string
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NET = REPO / "tests/data/istio/bookinfo/networking"
OLD = REPO / "tests/data/istio/bookinfo/networking@062bdf2"
NODES = ("u1", "pp", "det", "rv1", "rv2", "rv3", "rat", "e1", "e2", "e3", "cp", "s1")
Z999 = 3.29     # two-sided 99.9 %


def wilson(k: int, n: int, z: float = Z999) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(80, 100, 1.96)
    assert (round(lo, 4), round(hi, 4)) == (0.7112, 0.8666)


def bookinfo_text(prefix: str) -> str:
    text = (REPO / "topologies/bookinfo.yaml").read_text()
    text = re.sub(r"\b(" + "|".join(NODES) + r")\b", lambda m: prefix + m.group(1), text)
    return text.replace("rules: [bookinfo/", f"rules: [{REPO}/topologies/bookinfo/")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology

    p = "mi" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    topo = parse_topology(bookinfo_text(p), "<bookinfo>")
    assert topo.sections["mesh"].security.citadel, "Citadel runs in every mesh"
    with Testbed(topo, link_backend="auto") as tb:
        with Mesh(tb, topo.sections["mesh"]) as m:
            m.prefix = p
            m.apply_files([NET / "destination-rule-all.yaml"])     # Istio's first step
            yield m


def page(mesh, user: str | None = None, timeout_s: float = 20.0) -> tuple[dict, float]:
    t0 = time.monotonic()
    status, body = mesh.curl(f"{mesh.prefix}u1", "http://productpage:9080/productpage",
                             {"end-user": user} if user else None, timeout_s=timeout_s)
    elapsed = time.monotonic() - t0
    assert status == 200, body
    return json.loads(body), elapsed


def apply(mesh, *files: Path) -> list[str]:
    warnings = mesh.apply_files(list(files))
    mesh.wait_ready(15)
    return warnings


def test_request_routing_jason_gets_v2_everyone_else_v1(mesh):
    apply(mesh, NET / "virtual-service-all-v1.yaml")
    assert {page(mesh)[0]["reviews"]["version"] for _ in range(10)} == {"v1"}
    apply(mesh, NET / "virtual-service-reviews-test-v2.yaml")
    for _ in range(10):
        jason = page(mesh, "jason")[0]["reviews"]
        assert (jason["version"], jason["stars"]) == ("v2", "black")
        assert [r["rating"]["color"] for r in jason["reviews"]] == ["black", "black"]
        other = page(mesh, "someone")[0]["reviews"]
        assert (other["version"], other["stars"]) == ("v1", None)
        assert page(mesh)[0]["reviews"]["version"] == "v1"


@pytest.mark.parametrize("sample, weights", [("virtual-service-reviews-80-20.yaml", {"v1": 0.8, "v2": 0.2}),
                                             ("virtual-service-reviews-50-v3.yaml", {"v1": 0.5, "v3": 0.5}),
                                             ("virtual-service-reviews-90-10.yaml", {"v1": 0.9, "v2": 0.1}),
                                             ("virtual-service-reviews-v2-v3.yaml", {"v2": 0.5, "v3": 0.5})])
def test_traffic_shifting_within_the_wilson_interval(mesh, sample, weights):
    apply(mesh, NET / "virtual-service-all-v1.yaml", NET / sample)
    n = 1000
    # from productpage's host: its sidecar routes these exactly as productpage's own calls
    r = mesh.requests(f"{mesh.prefix}pp", "http://reviews:9080/reviews/0", n)
    assert r["errors"] == 0 and r["codes"] == {"200": n}, r
    assert set(r["versions"]) <= set(weights), r["versions"]
    for version, w in weights.items():
        lo, hi = wilson(r["versions"].get(version, 0), n)
        assert lo <= w <= hi, (version, r["versions"], (lo, hi))


@pytest.mark.parametrize("delay_file", [NET / "virtual-service-ratings-test-delay.yaml",
                                        OLD / "virtual-service-ratings-test-delay.yaml"])
def test_fault_injection_delay_productpage_times_out_as_in_istios_task(mesh, delay_file):
    warnings = apply(mesh, NET / "virtual-service-all-v1.yaml", NET / "virtual-service-reviews-test-v2.yaml",
                     delay_file)
    deprecated = [w for w in warnings if "[IST0004]" in w]
    assert len(deprecated) == (1 if delay_file.parent == OLD else 0), warnings
    fast, t_fast = page(mesh, "someone")
    assert fast["reviews"]["version"] == "v1" and t_fast < 2.0
    jason, t_jason = page(mesh, "jason")
    # productpage: 3 s per try, one retry -> ~6 s, then Istio's message; reviews would have
    # waited 7 s for ratings (its own timeout is 10 s): the task's "bug"
    assert 5.5 <= t_jason < 7.0, t_jason
    assert jason["reviews"]["message"] == "Sorry, product reviews are currently unavailable for this book."
    assert jason["reviews"]["attempts"] == 2
    t0 = time.monotonic()
    status, body = mesh.curl(f"{mesh.prefix}pp", "http://reviews:9080/reviews/0", {"end-user": "jason"},
                             timeout_s=15)
    assert status == 200 and 6.9 <= time.monotonic() - t0 < 9.5
    reviews = json.loads(body)
    assert reviews["version"] == "v2" and reviews["reviews"][0]["rating"] == {"stars": 5, "color": "black"}


@pytest.mark.parametrize("abort_file", [NET / "virtual-service-ratings-test-abort.yaml",
                                        OLD / "virtual-service-ratings-test-abort.yaml"])
def test_fault_injection_abort_ratings_unavailable_for_jason(mesh, abort_file):
    apply(mesh, NET / "virtual-service-all-v1.yaml", NET / "virtual-service-reviews-test-v2.yaml", abort_file)
    jason, elapsed = page(mesh, "jason")
    assert elapsed < 2.0
    assert jason["reviews"]["version"] == "v2"
    assert [r["rating"] for r in jason["reviews"]["reviews"]] == \
        [{"error": "Ratings service is currently unavailable"}] * 2
    assert "HTTP 500" in jason["reviews"]["ratings_from"]["error"]
    other = page(mesh, "someone")[0]["reviews"]
    assert (other["version"], other["stars"]) == ("v1", None)


def handshakes(mesh, sidecar: str) -> int:
    stats = mesh.sidecar_admin(sidecar, "/stats")
    return sum(int(v) for k, _, v in (ln.partition(": ") for ln in stats.splitlines())
               if k.endswith("ssl.handshake") and v.strip().isdigit())


def test_mtls_destination_rules_apply_live_to_a_default_mesh(mesh):
    apply(mesh, NET / "virtual-service-all-v1.yaml")
    before = handshakes(mesh, "reviews-v1-0")
    apply(mesh, NET / "destination-rule-all-mtls.yaml")
    for _ in range(5):
        assert "error" not in page(mesh)[0]["reviews"]
    assert handshakes(mesh, "reviews-v1-0") > before          # productpage -> reviews over mTLS
    assert handshakes(mesh, "productpage-v1-0") > 0             # the client sidecar -> productpage
    rules = {(r["kind"], r["name"]): r for r in mesh.rules()}
    assert rules[("DestinationRule", "reviews")]["manifest"]["spec"]["trafficPolicy"] == \
        {"tls": {"mode": "ISTIO_MUTUAL"}}
    apply(mesh, NET / "destination-rule-all.yaml")              # back to plaintext
    assert "error" not in page(mesh)[0]["reviews"]


def test_delete_and_get_like_kubectl(mesh):
    from testbed.cli.mesh import cli_delete, cli_get
    apply(mesh, NET / "virtual-service-all-v1.yaml")
    table = cli_get(mesh, "virtualservices")
    assert table.splitlines()[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert sorted(line.split()[0] for line in table.splitlines()[1:]) == ["details", "productpage", "ratings",
                                                                          "reviews"]
    out = cli_delete(mesh, f"-f {NET / 'virtual-service-all-v1.yaml'}")
    assert out.count("deleted") == 4 and 'virtualservice.networking.istio.io "reviews" deleted' in out
    assert cli_get(mesh, "vs") == "No resources found in default namespace.\n"
    assert not [r for r in mesh.status()["rules"] if r.startswith("VirtualService/")]
    assert page(mesh)[0]["reviews"]["version"] in ("v1", "v2", "v3")     # round robin again


def test_the_other_routing_samples(mesh):
    apply(mesh, NET / "virtual-service-all-v1.yaml", NET / "virtual-service-reviews-v3.yaml")
    assert {page(mesh)[0]["reviews"]["stars"] for _ in range(5)} == {"red"}
    apply(mesh, NET / "virtual-service-reviews-jason-v2-v3.yaml")
    assert [page(mesh, "jason")[0]["reviews"]["version"] for _ in range(3)] == ["v2"] * 3
    assert [page(mesh, "someone")[0]["reviews"]["version"] for _ in range(3)] == ["v3"] * 3
    mesh.delete_files([NET / "virtual-service-all-v1.yaml"])
    apply(mesh, NET / "destination-rule-reviews.yaml")          # RANDOM over v1, v2, v3
    r = mesh.requests(f"{mesh.prefix}pp", "http://reviews:9080/reviews/0", 300)
    assert r["codes"] == {"200": 300} and set(r["versions"]) == {"v1", "v2", "v3"}, r
    apply(mesh, NET / "destination-rule-all.yaml")


def test_details_abort_and_the_samples_for_versions_this_bookinfo_does_not_run(mesh):
    apply(mesh, NET / "virtual-service-all-v1.yaml", NET / "fault-injection-details-v1.yaml")
    details = page(mesh)[0]["details"]
    assert details["status"] == 555 and details["message"].startswith("Sorry, product details")
    apply(mesh, NET / "destination-rule-all.yaml", NET / "virtual-service-all-v1.yaml")
    assert page(mesh)[0]["details"]["service"] == "details"
    for sample in ("virtual-service-ratings-db.yaml", "virtual-service-ratings-mysql.yaml",
                   "virtual-service-ratings-mysql-vm.yaml"):
        apply(mesh, NET / "virtual-service-all-v1.yaml", NET / sample)
        reviews = page(mesh)[0]["reviews"]        # reviews v3 -> ratings v2*: no instance, 503
        assert reviews["version"] == "v3" and "HTTP 503" in reviews["ratings_from"]["error"], reviews
    apply(mesh, NET / "virtual-service-all-v1.yaml", NET / "virtual-service-details-v2.yaml")
    assert page(mesh)[0]["details"]["status"] == 503
    apply(mesh, NET / "virtual-service-all-v1.yaml")


SECURITY = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-from-productpage}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]}]
"""


def test_peer_authentication_and_authorization_policy_apply_live_to_a_default_mesh(mesh, tmp_path):
    """No security: section in the topology, no restart: STRICT refuses a host without a
    sidecar, the AuthorizationPolicy lets only productpage call reviews; delete -f undoes both."""
    apply(mesh, NET / "destination-rule-all.yaml", NET / "virtual-service-all-v1.yaml")
    rv1 = next(i for i in mesh.instances() if i.instance == "reviews-v1-0")
    outsider = f"{mesh.prefix}e1"                     # an etcd host: no sidecar
    assert mesh.curl(outsider, f"http://{rv1.ip}:{rv1.port}/reviews/0")[0] == 200
    f = tmp_path / "security.yaml"
    f.write_text(SECURITY)
    apply(mesh, f)
    assert mesh.curl(outsider, f"http://{rv1.ip}:{rv1.port}/reviews/0", timeout_s=3)[0] == 0   # refused
    assert "error" not in page(mesh)[0]["reviews"]                        # productpage -> reviews: allowed
    status, body = mesh.curl(f"{mesh.prefix}u1", "http://reviews:9080/reviews/0")  # sa/client
    assert (status, body) == (403, "RBAC: access denied")
    mesh.delete_files([f])
    mesh.wait_ready(15)
    assert mesh.curl(f"{mesh.prefix}u1", "http://reviews:9080/reviews/0")[0] == 200
    assert mesh.curl(outsider, f"http://{rv1.ip}:{rv1.port}/reviews/0")[0] == 200
