"""``report.html``: one self-contained page per run (an experiment's output directory, or
``minimesh up --out DIR``), written after the history is complete.

It opens from ``file://`` with no network: the style sheet, the drawing script
(static/ui.js, the live page's) and the data are inlined, plots are embedded as PNG data
URIs, captures are relative links. It holds the topology as built, the service graph of
the whole run with per-edge totals (from the history's requests: count, success, p50/p99,
each version's share), the timeline with fault windows (faults, pushes, NACKs, ejections,
leader changes), every check with its verdict (results.json), the plots, and the captures.

    path = write_report(out_dir, topology=topo, spec=mesh_spec)    # -> out_dir/report.html
"""
from __future__ import annotations

import base64
import html
import json
import statistics
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from testbed.history import HistoryData, HistoryError, Request, read_history
from testbed.ui.page.model import fault_spans, link_state, timeline_item

__all__ = ["write_report", "report_state", "REPORT"]

REPORT = "report.html"


def _static(name: str) -> str:
    return resources.files("testbed.ui.page").joinpath("static", name).read_text(encoding="utf-8")


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def _rates(reqs: list[Request], duration_s: float) -> dict[str, Any]:
    ok = [r for r in reqs if r.ok]
    lat = [r.latency_s * 1000 for r in ok]
    return {"rps": round(len(reqs) / duration_s, 1) if duration_s > 0 else 0.0, "total": len(reqs),
            "success": round(len(ok) / len(reqs), 4) if reqs else None,
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99)}


def _service_graph(data: HistoryData, spec: Any) -> dict[str, Any]:
    """Per-edge totals of the run: sources -> services -> versions -> instances."""
    reqs = data.requests
    duration = (max(r.t_end for r in reqs) - min(r.t_start for r in reqs)) if reqs else 0.0
    layout: dict[str, dict[str, dict[str, str]]] = {}     # service -> version -> instance -> host
    for i in getattr(spec, "instances", ()):
        layout.setdefault(i.service, {}).setdefault(i.version, {})[i.instance] = i.host
    for r in reqs:
        if r.service and r.version and r.instance:
            layout.setdefault(r.service, {}).setdefault(r.version, {}).setdefault(r.instance, "")
    ejected: dict[str, list[str]] = {}
    for e in data.events:
        if e.kind == "ejection" and e.details.get("enforced") and e.details.get("instance"):
            ejected.setdefault(str(e.details["instance"]), []).append(e.source.removeprefix("sidecar:"))
    services = []
    for svc in sorted(layout):
        svc_reqs = [r for r in reqs if r.service == svc]
        versions = []
        for ver in sorted(layout[svc]):
            insts = [{"name": n, "host": h, "state": "up", "error": "", "ejected_by": sorted(set(ejected.get(n, []))),
                      **_rates([r for r in svc_reqs if r.instance == n], duration)}
                     for n, h in sorted(layout[svc][ver].items())]
            n_ver = sum(1 for r in svc_reqs if r.version == ver)
            versions.append({"name": ver, "rps": round(n_ver / duration, 1) if duration > 0 else 0.0,
                             "share": round(n_ver / len(svc_reqs), 4) if svc_reqs else None, "instances": insts})
        services.append({"name": svc, "rps": _rates(svc_reqs, duration)["rps"], "versions": versions})
    edges, sources = [], set()
    for (client, svc) in sorted({(r.client or "client", r.service) for r in reqs if r.service}):
        sel = [r for r in reqs if (r.client or "client") == client and r.service == svc]
        src = f"client:{client}"
        sources.add(src)
        n = len(sel)
        split = {v: round(sum(1 for r in sel if r.version == v) / n, 4)
                 for v in sorted({r.version for r in sel if r.version})}
        edges.append({"src": src, "dst": f"svc:{svc}", **_rates(sel, duration), "split": split,
                      "ejecting": any(ejected.get(i) for v in layout.get(svc, {}).values() for i in v)})
    return {"services": services, "edges": edges, "sources": sorted(sources)}


def _network(topology: Any) -> dict[str, Any]:
    if topology is None:
        return {"nodes": [], "links": [], "drops": [], "partitions": []}
    spec = (getattr(topology, "sections", None) or {}).get("mesh")
    roles: dict[str, list[str]] = {}
    for i in getattr(spec, "instances", ()):
        roles.setdefault(i.host, []).append(i.instance)
    for m in getattr(getattr(spec, "registry", None), "members", ()):
        roles.setdefault(m, []).append("etcd")
    if spec is not None:
        roles.setdefault(spec.control_plane, []).append("pilot")
    nodes = [{"id": h.name, "kind": "host", "marks": [], "cut": False, "roles": roles.get(h.name, [])}
             for h in topology.hosts]
    nodes += [{"id": s.name, "kind": "switch", "marks": [], "cut": False, "roles": []} for s in topology.switches]
    links = [link_state(lk.node1, lk.node2, lk.shape1, lk.shape2, True, False) for lk in topology.links]
    return {"nodes": nodes, "links": links, "drops": [], "partitions": []}


def report_state(data: HistoryData, topology: Any = None, spec: Any = None) -> dict[str, Any]:
    """The page's state (as testbed.ui.collect draws it live) for a whole finished run."""
    items = [it for it in (timeline_item(r) for r in [*data.faults, *data.events]) if it is not None]
    items.sort(key=lambda it: it["t"])
    ends = [r.t_end for r in data.requests] + [it["t"] for it in items]
    t = max(ends, default=0.0)
    if spec is None and topology is not None:
        spec = (getattr(topology, "sections", None) or {}).get("mesh")
    return {"t": round(t, 3), "live": False, "topology": getattr(topology, "name", ""),
            "network": _network(topology), "services": _service_graph(data, spec), "control": None,
            "timeline": items, "spans": fault_spans(items, t)}


def _checks_html(results: Mapping[str, Any] | None) -> str:
    if results is None:
        return "<p>no checks (no results.json: a <code>minimesh up</code> session)</p>"
    rows = []
    for name, v in results.get("verdicts", {}).items():
        ok = bool(v.get("valid"))
        detail = v.get("detail") or ", ".join(f"{k}={v[k]}" for k in list(v)[1:6])
        rows.append(f"<tr><td class='verdict-{'ok' if ok else 'fail'}'>{'ok' if ok else 'FAIL'}</td>"
                    f"<td>{html.escape(name)}</td><td>{html.escape(str(detail))}</td></tr>")
    overall = "PASS" if results.get("valid") else "FAIL"
    return (f"<p>overall: <b class='verdict-{'ok' if results.get('valid') else 'fail'}'>{overall}</b> "
            f"(seed {html.escape(str(results.get('seed')))})</p><table id='checks'><tr><th>verdict</th><th>check</th>"
            f"<th>detail</th></tr>{''.join(rows)}</table>")


def _control_html(data: HistoryData) -> str:
    counts: dict[tuple[str, str], int] = {}
    for e in data.events:
        src = e.source if not e.source.startswith("sidecar:") else "sidecars"
        counts[(src, e.kind)] = counts.get((src, e.kind), 0) + 1
    if not counts:
        return "<p>no control-plane events in the history</p>"
    rows = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(k)}</td><td>{n}</td></tr>"
                   for (s, k), n in sorted(counts.items()))
    return f"<table id='events'><tr><th>source</th><th>event</th><th>count</th></tr>{rows}</table>"


def _plots_html(out: Path) -> str:
    imgs = []
    for p in sorted(out.glob("*.png")):
        b64 = base64.b64encode(p.read_bytes()).decode()
        imgs.append(f"<figure><img class='plot' alt='{html.escape(p.name)}' src='data:image/png;base64,{b64}'>"
                    f"<figcaption>{html.escape(p.name)}</figcaption></figure>")
    return "".join(imgs) or "<p>no plots</p>"


def _captures_html(out: Path, captures: Iterable[Path]) -> str:
    items = []
    for p in sorted(captures):
        try:
            href = p.relative_to(out).as_posix()
        except ValueError:
            href = p.resolve().as_uri()
        items.append(f"<li><a href='{html.escape(href)}'>{html.escape(href)}</a> ({p.stat().st_size // 1024} KiB)</li>")
    return f"<ul id='captures'>{''.join(items)}</ul>" if items else "<p>no captures</p>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} — minimesh report</title>
<style>{css}</style></head>
<body><header><b>minimesh report</b> <span id="topology"></span> <span id="clock"></span>
<span>{subtitle}</span></header>
<main>
<section id="checks-panel"><h2>Checks</h2>{checks}</section>
<section id="network-panel"><h2>Network (as built)</h2><svg id="network" viewBox="0 0 640 380"></svg>
<div id="partitions"></div></section>
<section id="services-panel"><h2>Service graph of the run <small>(rps averaged over the run · success ·
p50/p99 of the successful requests · each version's share; from the history's requests)</small></h2>
<svg id="services" viewBox="0 0 790 300"></svg></section>
<section id="control-panel"><h2>Control plane and data plane events</h2>{control}</section>
<section id="timeline-panel"><h2>Timeline <small>(fault windows as bars; pushes, NACKs, ejections, leader
changes as ticks)</small></h2><svg id="timeline-chart" viewBox="0 0 1200 120"></svg><ol id="timeline"></ol></section>
<section id="plots-panel"><h2>Plots</h2>{plots}</section>
<section id="captures-panel"><h2>Captures <small>(fault operations are packet comments:
tshark -r FILE -Y frame.comment)</small></h2>{captures}</section>
</main>
<script id="report-data" type="application/json">{data}</script>
<script>{js}</script>
</body></html>
"""


def write_report(out: str | Path, topology: Any = None, spec: Any = None, title: str = "",
                 captures: Path | None = None) -> Path:
    """``out/report.html`` from ``out/history.jsonl`` and, when present, ``out/results.json``,
    ``out/*.png`` and the pcapng files under ``captures`` (default ``out/pcap``)."""
    out = Path(out)
    hist = out / "history.jsonl"
    try:
        data = read_history(hist) if hist.exists() else HistoryData(())
    except HistoryError as e:
        data, title = HistoryData(()), f"{title} (history unreadable: {e})"
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    state = report_state(data, topology, spec)
    cap_dir = captures if captures is not None else out / "pcap"
    name = title or (results or {}).get("experiment") or getattr(topology, "name", "") or out.name
    n_req = len(data.requests)
    ok = sum(1 for r in data.requests if r.ok)
    subtitle = f"{n_req} requests ({ok / n_req:.2%} ok)" if n_req else "no workload requests"
    if n_req:
        subtitle += f", median latency {statistics.median(r.latency_s for r in data.requests) * 1000:.1f} ms"
    page = _PAGE.format(
        title=html.escape(str(name)), subtitle=html.escape(subtitle), css=_static("ui.css"),
        checks=_checks_html(results), control=_control_html(data), plots=_plots_html(out),
        captures=_captures_html(out, cap_dir.glob("*.pcapng") if cap_dir.is_dir() else ()),
        data=json.dumps(state, separators=(",", ":")).replace("</", "<\\/"),
        js=_static("ui.js").replace("</script", "<\\/script"))
    path = out / REPORT
    tmp = out / f".{REPORT}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_index(out: str | Path, title: str, parts: Iterable[tuple[str, bool, str]]) -> Path:
    """``out/report.html`` for a run of several parts (``minimesh demo``): each part's verdict
    and key number, linking its own ``out/<part>/report.html`` when it has one."""
    out = Path(out)
    rows = []
    for name, ok, key in parts:
        sub = out / name / REPORT
        link = f"<a href='{html.escape(name)}/{REPORT}'>{html.escape(name)}</a>" if sub.exists() else html.escape(name)
        rows.append(f"<tr><td class='verdict-{'ok' if ok else 'fail'}'>{'ok' if ok else 'FAIL'}</td><td>{link}</td>"
                    f"<td>{html.escape(key)}</td></tr>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_static('ui.css')}</style></head><body><header><b>{html.escape(title)}</b></header><main>"
            f"<section id='checks-panel'><h2>Parts</h2><table id='parts'><tr><th>verdict</th><th>part</th>"
            f"<th>result</th></tr>{''.join(rows)}</table></section></main></body></html>\n")
    path = out / REPORT
    path.write_text(page, encoding="utf-8")
    return path
