"""Parsing Istio YAML: values, file:line, schema messages."""
import pytest

from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.rules.yamldoc import parse_duration_ms
from testbed.mesh.model import DestinationRule, StringMatch, VirtualService

TUTORIAL = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: svcb
spec:
  hosts: [svcb]
  http:
  - match:
    - headers:
        User-Agent: {regex: ".*Android.*"}
      sourceLabels: {app: svca}
    route:
    - destination: {host: svcb, subset: canary}
  - route:
    - destination: {host: svcb, subset: stable}
      weight: 95
    - destination: {host: svcb, subset: canary, port: {number: 8080}}
      weight: 5
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
    timeout: 1.5s
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
    mirror: {host: svcb, subset: stable}
    mirrorPercentage: {value: 25}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svcb, namespace: default}
spec:
  host: svcb
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 7}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 2, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 2, consecutiveGatewayErrors: 1, interval: 5s,
                       baseEjectionTime: 3m, maxEjectionPercent: 40}
  subsets:
  - name: stable
    labels: {version: v1}
  - name: canary
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
"""


def test_tutorial_rules_parse_to_values_with_lines():
    rules, msgs = parse_rules(TUTORIAL, "t.yaml")
    assert msgs == []
    vs, dr = rules
    assert isinstance(vs, VirtualService) and isinstance(dr, DestinationRule)
    assert (vs.name, vs.hosts, vs.file, vs.line) == ("svcb", ("svcb",), "t.yaml", 1)
    m = vs.http[0].match[0]
    assert m.headers == (("user-agent", StringMatch("regex", ".*Android.*")),)
    assert m.source_labels == (("app", "svca"),) and m.line == 9
    r = vs.http[1]
    assert [(d.destination.subset, d.weight, d.line) for d in r.route] == \
        [("stable", 95, 15), ("canary", 5, 17)]
    assert r.route[1].destination.port == 8080
    assert (r.retries.attempts, r.retries.per_try_timeout_ms, r.retries.retry_on) == \
        (3, 2000, "5xx")
    assert r.timeout_ms == 1500
    assert (r.fault.delay_ms, r.fault.delay_percent) == (100, 10.0)
    assert (r.fault.abort_status, r.fault.abort_percent) == (503, 0.5)
    assert (r.mirror.subset, r.mirror_percent) == ("stable", 25.0)
    tp = dr.traffic_policy
    assert (tp.lb_simple, tp.max_connections, tp.http1_max_pending, tp.http2_max_requests,
            tp.max_retries) == ("RANDOM", 7, 1, 2, 3)
    od = tp.outlier
    assert (od.consecutive_5xx, od.consecutive_gateway, od.interval_ms, od.base_ejection_ms,
            od.max_ejection_percent) == (2, 1, 5000, 180000, 40)
    assert [(s.name, s.labels, s.line) for s in dr.subsets] == \
        [("stable", (("version", "v1"),), 40), ("canary", (("version", "v2"),), 42)]
    assert dr.subsets[1].traffic_policy.hash_header == "x-user"


@pytest.mark.parametrize("text,ms", [("1s", 1000), ("1.5s", 1500), ("100ms", 100),
                                     ("3m", 180000), ("1h30m", 5400000), ("0s", 0)])
def test_durations(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "5", "-1s", "1 s", "1d", "s", 5])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration_ms(text)


def _one(text):
    rules, msgs = parse_rules(text, "x.yaml")
    return rules, [(m.code, m.line, m.text) for m in msgs]


VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a]
  http:
  - route:
    - destination: {host: a}
"""


def test_unknown_field_is_reported_with_line_and_allowed_fields():
    rules, msgs = _one(VS + "      wieght: 5\n")
    assert rules == []
    [(code, line, text)] = msgs
    assert (code, line) == ("IST0106", 9)
    assert "spec.http[0].route[0].wieght: unknown field" in text and "weight" in text


def test_bad_duration_and_bad_percentage_and_bad_lb():
    text = VS + "    timeout: 5\n    fault: {abort: {httpStatus: 503, percentage: {value: 150}}}\n"
    rules, msgs = _one(text)
    assert rules == [] and [m[:2] for m in msgs] == [("IST0106", 9), ("IST0106", 10)]
    assert "spec.http[0].timeout: bad duration" in msgs[0][2]
    assert "percentage must be a number in 0..100" in msgs[1][2]
    dr = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a
  trafficPolicy: {loadBalancer: {simple: FASTEST}}
"""
    rules, msgs = _one(dr)
    assert rules == [] and msgs[0][:2] == ("IST0106", 6) and "ROUND_ROBIN" in msgs[0][2]


def test_bad_regex_is_ist0122():
    rules, msgs = _one(VS.replace("  - route:",
                                  "  - match: [{uri: {regex: '(unclosed'}}]\n    route:"))
    assert rules == [] and msgs[0][:2] == ("IST0122", 7)


def test_security_kinds_and_unsupported_fields_are_rejected_not_ignored():
    ra = """apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: default}
spec: {jwtRules: [{issuer: x}]}
"""
    rules, msgs = _one(ra)
    assert rules == [] and msgs[0][0] == "MM0002"
    rules, msgs = _one(VS + "    rewrite: {uri: /x}\n")
    assert rules == [] and msgs[0][:2] == ("MM0002", 9)
    rules, msgs = _one(VS.replace("apiVersion: networking.istio.io/v1",
                                  "apiVersion: networking.istio.io/v2"))
    assert rules == [] and msgs[0][:2] == ("IST0106", 1)


def test_v1beta1_and_v1_and_multi_documents():
    text = VS + "---\n" + VS.replace("networking.istio.io/v1", "networking.istio.io/v1beta1") \
        .replace("name: a}", "name: b}")
    rules, msgs = _one(text)
    assert msgs == [] and [(r.name, r.line) for r in rules] == [("a", 1), ("b", 10)]


def test_invalid_yaml_is_a_message_not_a_crash():
    rules, msgs = _one("a: [\n")
    assert rules == [] and msgs[0][0] == "IST0106" and "not valid YAML" in msgs[0][2]


def test_regex_outside_re2_is_ist0122():
    rules, msgs = _one(VS.replace("  - route:",
                                  "  - match: [{headers: {ua: {regex: '(?=.*Android).*'}}}]\n"
                                  "    route:"))
    assert rules == [] and msgs[0][:2] == ("IST0122", 7) and "not RE2 syntax" in msgs[0][2]
