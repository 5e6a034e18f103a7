"""The tutorial's front-proxy section, step by step on Mininet, then under load with a slow link.

    sudo python3 experiments/front_proxy.py [--quick] [--out DIR] [--proxy minimesh|envoy] [--delay-ms 50]

    "We set the envoy server to listen on port 15001 on address 10.0.0.1. [...] we'll make a
    request locally for google.com and examine the HTTP header, using
    curl -v -H 'Host: google.com' 10.0.0.1:15001/"

topologies/front-proxy.yaml: the seed's proxy YAML (topologies/front-proxy/envoy.yaml, byte
for byte) runs unmodified on h1 (10.0.0.1:15001). Host ``web`` stands in for
gwadvnet20.github.io; dnsmasq on ``dns`` answers for that name and h1's resolv.conf points at
it, so the proxy's logical_dns cluster resolves it the real way. From h2 the tutorial's curl
gets the stand-in's page; the web server saw ``Host: gwadvnet20.github.io`` (host_rewrite)
from 10.0.0.1. Then h2 sends an open-loop stream through the proxy while web's link gets
``--delay-ms`` of one-way delay for the middle third: latency rises by at least 2 x delay
and falls back after. ``--proxy envoy`` runs real Envoy on the v3 translation (envoy-v3.yaml).
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from pathlib import Path

from lablib.exercises import add_exercise_flag, apply_exercise
from lablib.tshark import print_tshark
from lablib import (LISTEN, PROXIES, SEED_YAML, SITE, curl, dns_queries, proxy_argv, proxy_config, read_web_log,
                    start_dns, start_website, step, tshark_count)
from testbed.apps.website import PAGE_MARKER
from testbed.faults import LinkChange
from testbed.history import HistoryData
from testbed.net.dns import DnsServer
from testbed.paths import REPO
from testbed.run import Context, Experiment
from testbed.run.checkers import check_availability, percentile


def configure(ap) -> None:
    ap.add_argument("--proxy", choices=PROXIES, default="minimesh", help="front proxy (default minimesh)")
    ap.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay on web's link (default 50)")
    ap.add_argument("--proxy-config", type=Path, help="the front proxy's YAML instead of the seed's "
                    "(Envoy v2 static config for minimesh, v3 for --proxy envoy)")
    ap.add_argument("--web-nagle", action="store_true", help="the stand-in web server as http.server is by "
                    "default: Nagle on, headers and body in two writes (question 3)")
    ap.add_argument("--fail-every", type=int, default=0, metavar="N", help="the web server answers every N-th "
                    "request 503 (a flaky upstream; the retry-flaky exercise)")
    add_exercise_flag(ap, "front_proxy")


def run(ctx: Context) -> None:
    tb = ctx.tb
    rate, duration, repeats = (20, 12, 0) if ctx.quick else (50, 30, 10)
    ctx.params.update(rate=rate, duration_s=duration, curl_repeats=repeats)
    ctx.names.update({tb.ip("h1"): "front-proxy", tb.ip("h2"): "client"})
    step(1, f"network {ctx.topology.name}: " + ", ".join(f"{h}={tb.ip(h)}" for h in tb.host_names))
    web_log = start_web(ctx)
    dns, dns_before = start_testbed_dns(ctx)
    start_front_proxy(ctx)
    tutorial_request(ctx, repeats)
    what_the_web_server_saw(ctx, web_log, dns, dns_before, repeats)
    load_with_slow_link(ctx, rate, duration)


def start_web(ctx: Context) -> Path:
    tb = ctx.tb
    step(2, f"web server on 'web' ({tb.ip('web')}:80) stands in for {SITE}")
    opts = (["--nagle"] if ctx.args.web_nagle else []) + (
        ["--fail-every", str(ctx.args.fail_every)] if ctx.args.fail_every else [])
    if opts:
        print("web$ python -m testbed.apps.website ... " + " ".join(opts))
    web_log = start_website(ctx, "web", probe_from="h1", options=opts)
    ctx.claim("web server listens on port 80", True, f"{tb.ip('web')}:80 seen from h1")
    return web_log


def start_testbed_dns(ctx: Context) -> tuple[DnsServer, int]:
    """(the DNS server, how many queries it had logged before the proxy started)."""
    tb = ctx.tb
    step(3, f"DNS server (dnsmasq) on 'dns' ({tb.ip('dns')}): {SITE} -> {tb.ip('web')}; h1 and h2 use it")
    dns = start_dns(ctx, "dns", {SITE: tb.ip("web")}, clients=("h1", "h2"))
    print("h1$ cat /etc/resolv.conf\n" + tb.host("h1").cmd("cat /etc/resolv.conf").rstrip())
    print(f"h1$ getent ahostsv4 {SITE}\n" + tb.host("h1").cmd(f"getent ahostsv4 {SITE}").rstrip())
    ips = dns.resolve("h1", SITE)
    ctx.claim("h1 resolves the site by DNS", ips == [tb.ip("web")], f"{SITE} -> {ips}")
    return dns, len(dns.log())


def start_front_proxy(ctx: Context) -> None:
    cfg = proxy_config(ctx.args.proxy, ctx.args.proxy_config)
    what = ("your YAML" if ctx.args.proxy_config else "the seed's YAML, unmodified" if cfg == SEED_YAML
            else "the seed's YAML translated to Envoy's v3 API")
    step(4, f"front proxy ({ctx.args.proxy}) on h1 with {what}: {cfg}")
    argv = proxy_argv(ctx.args.proxy, ctx.python, ctx.args.proxy_config)
    print("h1$ " + " ".join(argv))
    ctx.popen("h1", argv, "proxy")
    ctx.wait_tcp("h2", *LISTEN, proc="proxy")
    ctx.claim("proxy listens on 10.0.0.1:15001", True, "seen from h2")


def tutorial_request(ctx: Context, repeats: int) -> None:
    step(5, "from h2, the tutorial's request")
    print("h2$ curl -v -H 'Host: google.com' 10.0.0.1:15001/")
    rc, out, req = curl(ctx, "h2")
    print(out.rstrip())
    ctx.metrics["curl_status"] = req.status
    (ctx.out / "curl.txt").write_text(out)
    ctx.claim("curl succeeds with 200", rc == 0 and req.status == 200, f"curl exit {rc}, status {req.status}")
    ctx.claim("the page is the stand-in's", f"{PAGE_MARKER} {SITE}" in out,
              "page text found" if PAGE_MARKER in out else "page text missing")
    if repeats:
        print(f"\n(the same request {repeats} more times)")
        ok_n = sum(curl(ctx, "h2")[2].status == 200 for _ in range(repeats))
        ctx.claim("repeated requests succeed", ok_n == repeats, f"{ok_n}/{repeats} got 200")


def what_the_web_server_saw(ctx: Context, web_log: Path, dns: DnsServer, dns_before: int, repeats: int) -> None:
    step(6, "what the web server saw")
    seen = read_web_log(web_log)
    for rec in seen[:3]:
        print(f"  from {rec['peer']}: {rec['method']} {rec['path']}  Host: {rec['host']}")
    ctx.metrics["curl_requests"] = len(seen)
    flaky = ctx.args.fail_every > 0        # the proxy's retries (if any) reach the web server too
    ctx.claim("every request reached the web server", len(seen) >= 1 + repeats if flaky else len(seen) == 1 + repeats,
              f"{len(seen)} requests logged, {1 + repeats} sent")
    n = dns_queries(dns.log()[dns_before:], SITE, LISTEN[0])
    ctx.claim("the proxy resolved the site through the testbed DNS", n > 0,
              f"{n} A queries from h1 between the proxy's start and the curl, in dnsmasq's log (the proxy "
              "re-resolves a logical_dns cluster every 5 s, dns_refresh_rate: more follow during the load)")


def load_with_slow_link(ctx: Context, rate: int, duration: int) -> None:
    d = ctx.args.delay_ms
    nem = ctx.nemesis()
    t = ctx.clock.now() + 0.5
    step(7, f"h2: {rate} req/s through the proxy for {duration} s from t={t:.1f} s; web's link +{d:g} ms one-way "
            f"from t={t + duration / 3:.1f} s to t={t + 2 * duration / 3:.1f} s (experiment time)")
    ctx.workload("h2", "http", rate, duration, start_s=t, url=f"http://{LISTEN[0]}:{LISTEN[1]}/",
                 header={"Host": "google.com"}, client="h2", service="gwu", timeout=5)
    ctx.sleep_until(t + duration / 3)
    nem.apply(LinkChange(*ctx.host_link("web"), {"delay": f"{d:g}ms"}), fault_id=1).raise_for_error()
    f0 = ctx.clock.now()
    ctx.sleep_until(t + 2 * duration / 3)
    nem.revert(1)
    ctx.metrics["phases_s"] = {"start": t, "fault_on": f0, "fault_off": ctx.clock.now(), "end": t + duration}
    ctx.wait("workload", 20)


def analyze(ctx: Context, data: HistoryData) -> None:
    ph, d = ctx.metrics["phases_s"], ctx.args.delay_ms
    load = [r for r in data.requests if r.client == "h2"]
    ctx.verdicts["availability"] = check_availability(data.requests, 1.0, 0.99)

    def p50(t0: float, t1: float) -> float | None:
        v = percentile([r.latency_s * 1000 for r in load if r.ok and t0 <= r.t_start < t1], 50)
        return None if v is None else round(v, 1)
    before, during, after = (p50(ph["start"] + 1, ph["fault_on"]), p50(ph["fault_on"] + 0.5, ph["fault_off"]),
                             p50(ph["fault_off"] + 0.5, ph["end"]))
    ctx.metrics.update(workload_requests=len(load), workload_ok=sum(r.ok for r in load),
                       p50_ms={"before": before, "during": during, "after": after})
    print(f"\nworkload p50 latency: before {before} ms, with +{d:g} ms on web's link {during} ms, after {after} ms")
    rise = round(during - before, 1) if before is not None and during is not None else None
    ctx.claim(f"latency rose by 2 x {d:g} ms (one round trip) while web's link was delayed",
              rise is not None and abs(rise - 2 * d) <= 5 + 0.2 * d,
              f"p50 {before} -> {during} ms: +{rise} ms (allowed 2d ± (5 ms + 20 %))", rise_ms=rise)
    ctx.claim("latency back to normal after the revert",
              before is not None and after is not None and after - before <= 10,
              f"p50 before {before} ms, after {after} ms (allowed +10 ms)")
    seen = read_web_log(ctx.out / "web.jsonl")
    load_seen = len(seen) - ctx.metrics["curl_requests"]
    ctx.claim("every workload request reached the web server",
              len(load) > 0 and (load_seen >= len(load) if ctx.args.fail_every else load_seen == len(load)),
              f"{load_seen} logged, {len(load)} sent")
    ctx.claim(f"upstream saw Host: {SITE} (host_rewrite)", bool(seen) and all(r["host"] == SITE for r in seen),
              ", ".join(sorted({r['host'] for r in seen})) or "nothing")
    ctx.claim("requests came through h1 (10.0.0.1)", bool(seen) and all(r["peer"] == LISTEN[0] for r in seen),
              ", ".join(sorted({r['peer'] for r in seen})) or "nothing")
    if not ctx.args.no_capture:
        pcap = (ctx.args.capture or ctx.out / "pcap") / "h1-eth0.pcapng"
        dns_n = tshark_count(pcap, f'dns.flags.response == 0 && dns.qry.name == "{SITE}"')
        http_n = tshark_count(pcap, f'http.request && http.host == "{SITE}"')
        ctx.claim("h1's capture shows the DNS query and the rewritten request", dns_n > 0 and http_n > 0,
                  f"{pcap}: {dns_n} DNS queries over the whole run (one per 5 s refresh), {http_n} requests "
                  f"with Host: {SITE}")
    print_tshark(ctx, "h1-eth0.pcapng", [f'dns.flags.response == 0 && dns.qry.name == "{SITE}"',
                                         f'http.request && http.host == "{SITE}"',
                                         ("http.request && tcp.dstport == 15001", ("-d", "tcp.port==15001,http"))])
    print_tshark(ctx, "web-eth0.pcapng", ["tcp.flags.syn == 1 && tcp.flags.ack == 0", "http.response.code == 503",
                                          "http.response && tcp.len < 200"])
    apply_exercise(ctx, data)


EXPERIMENT = Experiment("front_proxy", __doc__, REPO / "topologies" / "front-proxy.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
