"""testbed.ui.page: the live page's state from raw signals, and report.html from a history
(no network, no root)."""
from __future__ import annotations

import json
import re

import pytest

from testbed.history import FakeClock, History
from testbed.shape import LinkShape
from testbed.ui.page.model import (RateWindow, fault_spans, link_state, merge_rates, quantile, sidecar_sample,
                                   split_series, timeline_item)
from testbed.ui.page.report import report_state, write_report
from testbed.history import read_history

L = ('destination_service="echo",destination_version="v1",response_code="200",response_flags="-",'
     'source_workload="client"')
PROM = "\n".join([
    f"istio_requests_total{{{L}}} %d",
    f"istio_requests_total{{{L.replace('200', '503')}}} %d",
    f'istio_request_duration_milliseconds_bucket{{{L},le="5"}} %d',
    f'istio_request_duration_milliseconds_bucket{{{L},le="100"}} %d',
    f'istio_request_duration_milliseconds_bucket{{{L},le="+Inf"}} %d',
    'envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name="outbound|8080|v1|echo"} %d',
    "envoy_server_days_until_first_cert_expiring 0.5"])


def prom(ok: int, bad: int, le5: int, le100: int, ejected: int = 0) -> dict[str, float]:
    from testbed.run.sidecar_stats import parse_prometheus
    return parse_prometheus(PROM % (ok, bad, le5, le100, ok, ejected))


def test_split_series_reads_labels():
    assert split_series('a_b{x="1",y="q\\"z"}') == ("a_b", {"x": "1", "y": 'q\\"z'})
    assert split_series("plain") == ("plain", {})


def test_sidecar_sample_sums_codes_and_reads_gauges():
    s = sidecar_sample(prom(90, 10, 50, 90, ejected=1))
    d = s.dests[("echo", "v1")]
    assert (d.requests, d.ok) == (100, 90)
    assert d.buckets[5.0] == 50 and d.buckets[float("inf")] == 90
    assert s.ejections_active == {"outbound|8080|v1|echo": 1}
    assert s.cert_days == 0.5
    from testbed.run.sidecar_stats import parse_prometheus      # as minimesh-proxy exports it
    text = "envoy_server_days_until_first_cert_expiring_total 0.04\n"
    assert sidecar_sample(parse_prometheus(text)).cert_days == 0.04


def test_quantile_interpolates_like_histogram_quantile():
    assert quantile(0.5, {5.0: 50, 100.0: 100, float("inf"): 100}) == pytest.approx(5.0)
    assert quantile(0.75, {5.0: 50, 100.0: 100, float("inf"): 100}) == pytest.approx(52.5)
    assert quantile(0.5, {}) is None and quantile(0.5, {1.0: 0}) is None


def test_rate_window_takes_the_deltas_of_the_window():
    """A delay that starts after a fast minute shows at once: the p50 is of the window's
    requests, not of every request since the sidecar started."""
    w = RateWindow(window_s=5)
    w.add(0.0, sidecar_sample(prom(1000, 0, 1000, 1000)))        # 1000 fast requests
    w.add(1.0, sidecar_sample(prom(1010, 0, 1000, 1010)))        # then 10 slow ones in 1 s
    r = w.rates(("echo", "v1"))
    assert r.rps == pytest.approx(10) and r.success == 1.0
    assert 5 < r.p50_ms <= 100 and r.total == 1010
    for t in range(2, 12):                                       # samples older than 5 s drop out
        w.add(float(t), sidecar_sample(prom(1010 + 5 * (t - 1), 5 * (t - 1), 1000, 1010 + 5 * (t - 1))))
    r = w.rates(("echo", "v1"))
    assert r.rps == pytest.approx(10) and r.success == pytest.approx(0.5)
    assert w.rates(("other", "v1")) is None


def test_merge_rates_adds_rates_and_weights_success():
    from testbed.ui.page.model import EdgeRates
    m = merge_rates([EdgeRates(95, 1.0, 2, 5, 950), EdgeRates(5, 0.0, 3, 9, 50), None])
    assert m.rps == 100 and m.success == pytest.approx(0.95) and (m.p50_ms, m.p99_ms) == (3, 9) and m.total == 1000
    assert merge_rates([None]) is None


def test_link_state_labels_and_colours():
    plain, slow = LinkShape(), LinkShape(delay_ms=50)
    assert link_state("a", "b", plain, plain, True, False)["color"] == "plain"
    s = link_state("a", "b", slow, slow, True, False)
    assert (s["label"], s["color"]) == ("50ms", "slow")
    s = link_state("a", "b", LinkShape(loss_pct=1), plain, False, False)
    assert s["color"] == "lossy" and s["label"] == "a→b 1% / b→a -" and s["up"] is False


def _history(tmp_path):
    clock = FakeClock()
    h = History(tmp_path / "history.jsonl", clock=clock)
    for i in range(100):
        version, inst = ("v2", "echo-v2-0") if i % 20 == 0 else ("v1", "echo-v1-0")
        h.request(t_start=i * 0.1, t_end=i * 0.1 + 0.002 * (1 + i % 3), status=200, instance=inst, version=version,
                  client="c0", service="echo")
    h.fault(t_start=2.0, t_end=2.01, fault_id=0, phase="apply", fault={"kind": "link-change"},
            description="link h1-s1 delay=50ms")
    h.fault(t_start=6.0, t_end=6.01, fault_id=0, phase="revert", fault={"kind": "link-change"},
            description="link h1-s1 delay=50ms")
    h.event("sidecar:client@c0", "ejection", t=3.0, instance="echo-v1-0", enforced=True, type="CONSECUTIVE_5XX")
    h.event("pilot", "push", t=1.0, node="x")          # per-node pushes stay out of the timeline
    h.event("pilot", "nack", t=4.0, node="x", error="bad")
    h.close()
    return read_history(tmp_path / "history.jsonl")


def test_timeline_items_and_fault_windows(tmp_path):
    data = _history(tmp_path)
    items = [it for it in (timeline_item(r) for r in [*data.faults, *data.events]) if it]
    assert [it["cls"] for it in items] == ["fault", "fault", "eject", "nack"]
    assert fault_spans(items, 10.0) == [{"t0": 2.0, "t1": 6.0, "label": "link h1-s1 delay=50ms", "open": False}]
    assert fault_spans(items[:1], 10.0)[0]["t1"] == 10.0           # still in force: ends now


def test_report_state_has_the_split_and_the_ejection(tmp_path):
    st = report_state(_history(tmp_path))
    (svc,) = st["services"]["services"]
    shares = {v["name"]: v["share"] for v in svc["versions"]}
    assert shares == {"v1": 0.95, "v2": 0.05}                      # a 5 % canary is 5 %
    (edge,) = st["services"]["edges"]
    assert edge["src"] == "client:c0" and edge["total"] == 100 and edge["success"] == 1.0
    assert edge["split"] == {"v1": 0.95, "v2": 0.05} and edge["ejecting"]
    v1 = next(v for v in svc["versions"] if v["name"] == "v1")
    assert v1["instances"][0]["ejected_by"] == ["client@c0"]


def test_report_html_is_self_contained(tmp_path):
    _history(tmp_path)
    verdicts = {"split within 99.9% interval": {"valid": True, "detail": "5.0%"},
                "no errors": {"valid": False, "detail": "</script><b>"}}
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "x", "seed": 1, "valid": False,
                                                       "verdicts": verdicts}))
    (tmp_path / "pcap").mkdir()
    (tmp_path / "pcap" / "c0-eth0.pcapng").write_bytes(b"\n\r\r\n")
    page = write_report(tmp_path).read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing loaded from the network"
    assert "split within 99.9% interval" in page and "FAIL" in page
    assert "&lt;/script&gt;&lt;b&gt;" in page                       # details are escaped
    assert "href='pcap/c0-eth0.pcapng'" in page
    data = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["spans"][0]["label"] == "link h1-s1 delay=50ms"


def test_demo_summary_names_its_report_first(tmp_path):
    from testbed.cli.demo import Part, format_summary
    from testbed.ui.page.report import write_index
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "report.html").write_text("x")
    index = write_index(tmp_path, "minimesh demo", [("delay", True, "20 ms"), ("canary", False, "v2 4.9 %")])
    page = index.read_text()
    assert "href='canary/report.html'" in page and "delay/report.html" not in page and "FAIL" in page
    lines = format_summary([Part("delay", True, "20 ms")], tmp_path, index).splitlines()
    assert lines[2].startswith(f"Report:  {index}")


def test_collector_without_a_mesh_draws_links_drops_and_process_faults():
    """The network part of the live state from a running testbed's control (fakes here):
    shapes, a downed link, drop rules as cut pairs, crashed/paused processes over their host."""
    from types import SimpleNamespace as NS
    from testbed.faults.kinds import Crash, Pause
    from testbed.topology.load import parse_topology
    from testbed.ui.collect import Collector
    topo = parse_topology("hosts: {h1: {}, h2: {}}\nswitches: {s1: {}}\n"
                          "links: [{between: [h1, s1]}, {between: [h2, s1]}]\n")

    class Link:
        def __init__(self, shape, up=True):
            self.shape, self.up = shape, up

        def get_shapes(self):
            return self.shape, self.shape

        def is_up(self):
            return self.up
    control = NS(links=lambda: [("h1", "s1", Link(LinkShape(delay_ms=50))), ("h2", "s1", Link(LinkShape(), False))],
                 drops=lambda: [NS(src="h1", dst="h2")])
    tb = NS(topology=topo, control=control, host_names=["h1", "h2"])
    nemesis = NS(outstanding={0: NS(fault=Crash("pilot")), 1: NS(fault=Pause("etcd1"))})
    net = Collector(tb, None, NS(nemesis=nemesis)).network()
    links = {(lk["a"], lk["b"]): lk for lk in net["links"]}
    assert links[("h1", "s1")]["label"] == "50ms" and links[("h1", "s1")]["color"] == "slow"
    assert links[("h2", "s1")]["up"] is False
    assert net["drops"] == [["h1", "h2"]]
    nodes = {n["id"]: n for n in net["nodes"]}
    assert nodes["h1"]["cut"] and nodes["h2"]["cut"] and not nodes["s1"]["cut"]
    assert set(nodes) == {"h1", "h2", "s1"}
    assert net["processes"] == ["pilot crashed", "etcd1 paused"]     # no mesh: no host to mark, listed apart
