"""Request sequences for the differential tests, with what Envoy is expected to show
(the expectations check the oracle harness itself; minimesh is compared to Envoy)."""
from __future__ import annotations

from testbed.apps.echo import Behaviour, Identity
from tests.support.differential import Req, Scenario

__all__ = ["ROUTING", "RESILIENCE", "FAULTS", "WEIGHTED", "WEIGHTED_N", "WEIGHT_A", "SCENARIOS"]


def _ups(**behaviours: Behaviour) -> dict[str, tuple[Identity, Behaviour]]:
    return {n: (Identity(n, "v1", f"{n}-0"), b) for n, b in behaviours.items()}


_ABC = _ups(a=Behaviour(), b=Behaviour(), c=Behaviour())
_ALL = (("x-mm-vhost", "all"),)

ROUTING = Scenario("routing", "routing.yaml", _ABC, (
    Req("/exact"),
    Req("/exact/more"),
    Req("/api/v2/items"),
    Req("/api/v2/items/7"),
    Req("/svc/x", headers=(("x-mm-variant", "beta"),)),
    Req("/svc/x", headers=(("x-mm-variant", "alpha"),)),
    Req("/svc/x"),
    Req("/old/thing?q=1"),
    Req("/host/x", headers=(("Host", "orig.example"),)),
    Req("/direct"),
    Req("/hdr/x", headers=(("x-mm-drop", "yes"), ("x-mm-route", "client"), ("x-mm-keep", "k"))),
    Req("/nothing"),
    Req("/svc/post", method="POST", body=b"x" * 3000),
    Req("/svc/small", method="POST", body=b"y" * 100),      # body in the headers' segment
    Req("/svc/chunked", method="PUT", headers=(("Transfer-Encoding", "chunked"),),
        body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    Req("/svc/big", method="POST", body=b"z" * 300_000),
    Req("/svc/traced", headers=(("x-request-id", "3f1c0e52-1111-4b7a-9c1e-000000000001"),
                                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                                ("x-b3-spanid", "e457b5a2e4d86bd1"), ("x-b3-sampled", "1"))),
), (
    dict(status=200, instance="c-0", attempts=1, path="/exact", host="differential.test",
         upstream_headers=_ALL, request_id_sent=True),
    dict(status=404, attempts=0),
    dict(status=200, instance="b-0", path="/api/v2/items"),
    dict(status=404, attempts=0),
    dict(status=200, instance="b-0"),
    dict(status=200, instance="a-0"),
    dict(status=200, instance="a-0"),
    dict(status=200, instance="a-0", path="/new/thing?q=1"),
    dict(status=200, instance="a-0", host="rewritten.example", path="/host/x"),
    dict(status=418, attempts=0, local_body="short and stout\n"),
    dict(status=200, instance="a-0",
         upstream_headers=(("x-mm-keep", "k"), ("x-mm-route", "hdr"), ("x-mm-vhost", "all")),
         response_headers=(("x-echo-instance", "a-0"), ("x-echo-version", "v1"), ("x-mm-resp", "added"))),
    dict(status=404, attempts=0),
    dict(status=200, instance="a-0", method="POST", body_bytes=3000),
    dict(status=200, instance="a-0", method="POST", body_bytes=100),
    dict(status=200, instance="a-0", method="PUT", body_bytes=11),
    dict(status=200, instance="a-0", method="POST", body_bytes=300_000),
    dict(status=200, instance="a-0", trace_headers=(("x-request-id", "kept"), ("traceparent", "kept"),
         ("x-b3-traceid", "kept"), ("x-b3-spanid", "kept"), ("x-b3-sampled", "kept"))),
))

RESILIENCE = Scenario("resilience", "resilience.yaml", _ups(
    flaky2=Behaviour(fail_first=2), flaky3=Behaviour(fail_first=3),
    flaky1=Behaviour(fail_first=1, fail_status=502), flaky9=Behaviour(fail_first=1),
    slow=Behaviour(delay_ms=1500)), (
    Req("/retry"), Req("/retry"), Req("/exhaust"), Req("/exhaust"), Req("/gateway"),
    Req("/noretry"), Req("/noretry"), Req("/timeout"), Req("/pertry"), Req("/empty"), Req("/refused"),
), (
    dict(status=200, attempts=3, instance="flaky2-0"),
    dict(status=200, attempts=1),
    dict(status=503, attempts=3, instance="flaky3-0"),
    dict(status=200, attempts=1),
    dict(status=200, attempts=2, instance="flaky1-0"),
    dict(status=503, attempts=1),
    dict(status=200, attempts=1),
    dict(status=504, attempts=1, elapsed_min_s=0.25, elapsed_max_s=1.2),
    dict(status=504, attempts=2, elapsed_min_s=0.35, elapsed_max_s=1.2),
    dict(status=503, attempts=0),
    dict(status=503, attempts=0),
))

_ABORT = "x-envoy-fault-abort-request"
_DELAY = "x-envoy-fault-delay-request"
FAULTS = Scenario("faults", "faults.yaml", _ups(
    a=Behaviour(), good=Behaviour(), bad=Behaviour(fail_first=10**9)), (
    Req("/x"),
    Req("/x", headers=((_ABORT, "503"),)),
    Req("/x", headers=((_ABORT, "429"),)),
    Req("/x", headers=((_DELAY, "250"),)),
    Req("/x", headers=((_ABORT, "502"), (_DELAY, "100"))),
    # /od (outlier detection) is in test_differential_faults.py: round robin's first pick
    # is random, so outcomes are compared as counts there, not as a sequence
), (
    dict(status=200, attempts=1, instance="a-0"),
    dict(status=503, attempts=0),
    dict(status=429, attempts=0),
    dict(status=200, attempts=1, elapsed_min_s=0.24, elapsed_max_s=1.0),
    dict(status=502, attempts=0, elapsed_min_s=0.09),
))

WEIGHTED_N = 400
WEIGHT_A = 0.80
WEIGHTED = Scenario("weighted", "routing.yaml", _ABC,
                    tuple(Req(f"/weighted/{i}") for i in range(WEIGHTED_N)))

SCENARIOS = (ROUTING, RESILIENCE, FAULTS)
