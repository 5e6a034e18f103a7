/* minimesh live view and report: draws the state (testbed/ui/collect.py, testbed/ui/report.py)
   as hand-written SVG. No library, no network: the same file serves the live page (state over
   Server-Sent Events from /events) and every report.html (state embedded in the page). */
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  function el(parent, tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function h(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
  const fmt = (x, d) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d === undefined ? 1 : d);
  const pct = (x) => (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + "%";

  /* ---- the network: switches on a line, each host around its switch ---- */
  function layoutNetwork(net, W, H) {
    const pos = {};
    const sw = net.nodes.filter((n) => n.kind === "switch").map((n) => n.id);
    const hosts = net.nodes.filter((n) => n.kind === "host").map((n) => n.id);
    sw.forEach((s, i) => { pos[s] = [W * (i + 1) / (sw.length + 1), H / 2]; });
    const groups = {};
    const loose = [];
    for (const hname of hosts) {
      const l = net.links.find((k) => (k.a === hname && sw.includes(k.b)) || (k.b === hname && sw.includes(k.a)));
      if (l) { const s = l.a === hname ? l.b : l.a; (groups[s] = groups[s] || []).push(hname); } else loose.push(hname);
    }
    for (const [s, members] of Object.entries(groups)) {
      const [cx, cy] = pos[s];
      const r = Math.min(H / 2 - 30, Math.max(90, 22 * members.length), W / (sw.length + 1) * 0.9);
      members.forEach((m, i) => {
        const a = -Math.PI / 2 + 2 * Math.PI * (i + 0.5) / members.length;
        pos[m] = [cx + r * Math.cos(a) * (sw.length > 1 ? 0.55 : 1.3), cy + r * Math.sin(a)];
      });
    }
    loose.forEach((m, i) => { pos[m] = [W * (i + 1) / (loose.length + 1), H - 25]; });
    return pos;
  }

  function drawNetwork(svg, net) {
    clear(svg);
    const W = 640, H = 380;
    const pos = layoutNetwork(net, W, H);
    for (const l of net.links) {
      const [x1, y1] = pos[l.a], [x2, y2] = pos[l.b];
      const g = el(svg, "g", { "data-link": l.a + "-" + l.b });
      el(g, "line", { x1, y1, x2, y2, class: "link " + (l.up ? l.color : "down") });
      const label = (l.up ? "" : "DOWN ") + (l.label || "");
      if (label) el(g, "text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, class: "linklabel", "text-anchor": "middle" }, label);
      el(g, "title", {}, `${l.a} → ${l.b}: ${l.fwd || "unshaped"}\n${l.b} → ${l.a}: ${l.back || "unshaped"}${l.up ? "" : "\nDOWN"}`);
    }
    const seen = new Set();
    for (const [a, b] of net.drops) {
      const key = [a, b].sort().join("|");
      if (seen.has(key) || !pos[a] || !pos[b]) continue;
      seen.add(key);
      const [x1, y1] = pos[a], [x2, y2] = pos[b];
      const mx = (x1 + x2) / 2 + (y2 - y1) * 0.2, my = (y1 + y2) / 2 - (x2 - x1) * 0.2;
      const p = el(svg, "path", { d: `M${x1},${y1} Q${mx},${my} ${x2},${y2}`, class: "drop", "data-drop": key });
      el(p, "title", {}, `traffic dropped between ${a} and ${b} (partition or drop)`);
    }
    for (const n of net.nodes) {
      const [x, y] = pos[n.id];
      const state = n.marks.some((m) => m.endsWith("crashed")) ? " crashed" : n.marks.some((m) => m.endsWith("paused")) ? " paused" : "";
      const g = el(svg, "g", { class: `node ${n.kind}${n.cut ? " cut" : ""}${state}`, "data-id": n.id });
      if (n.kind === "switch") el(g, "rect", { x: x - 18, y: y - 11, width: 36, height: 22, rx: 3 });
      else el(g, "circle", { cx: x, cy: y, r: 15 });
      el(g, "text", { x, y: y + 4, "text-anchor": "middle" }, n.id);
      if (n.roles.length) el(g, "text", { x, y: y + 27, "text-anchor": "middle", class: "role" }, n.roles.join(" "));
      n.marks.forEach((m, i) => el(g, "text", { x, y: y - 20 - 12 * i, "text-anchor": "middle", class: "mark" }, m));
    }
    const parts = $("partitions");
    if (parts) parts.textContent = (net.partitions && net.partitions.length ? "partitions: " + net.partitions.join("; ") : "") +
      (net.processes && net.processes.length ? "  processes: " + net.processes.join(", ") : "");
  }

  /* ---- the service graph: sources -> services -> versions -> instances ---- */
  function box(svg, x, y, w, label, cls, id, sub) {
    const g = el(svg, "g", { class: "gnode " + cls, "data-id": id });
    el(g, "rect", { x: x - w / 2, y: y - 13, width: w, height: sub ? 34 : 26, rx: 5 });
    el(g, "text", { x, y: y + 4, "text-anchor": "middle" }, label);
    if (sub) el(g, "text", { x, y: y + 17, "text-anchor": "middle", class: "role" }, sub);
    return g;
  }
  function edge(svg, x1, y1, x2, y2, cls, label, attrs, at) {
    const mx = (x1 + x2) / 2, t = at === undefined ? 0.5 : at;   // the label at t along the curve
    const g = el(svg, "g", attrs || {});
    el(g, "path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "gedge " + cls });
    const lx = x1 + (x2 - x1) * t, ly = y1 + (y2 - y1) * (3 * t * t - 2 * t * t * t);
    if (label) label.split("\n").forEach((line, i) =>
      el(g, "text", { x: lx, y: ly - 5 + 12 * i, "text-anchor": "middle", class: "elabel" }, line));
    return g;
  }

  function drawServices(svg, sg) {
    clear(svg);
    const X = { src: 60, svc: 290, ver: 480, inst: 725 };
    const rows = [];
    sg.services.forEach((s) => s.versions.forEach((v) => v.instances.forEach((i) => rows.push([s, v, i]))));
    const H = Math.max(140, 44 * rows.length + 30);
    svg.setAttribute("viewBox", `0 0 790 ${H}`);
    const y = {};
    rows.forEach(([s, v, i], k) => { y["inst:" + i.name] = 30 + 44 * k; });
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (const s of sg.services) {
      for (const v of s.versions) y[`ver:${s.name}/${v.name}`] = mean(v.instances.map((i) => y["inst:" + i.name]));
      y["svc:" + s.name] = mean(s.versions.map((v) => y[`ver:${s.name}/${v.name}`]));
    }
    const srcs = sg.sources.concat(sg.edges.map((e) => e.src).filter((s) => !sg.sources.includes(s) && !(s in y)));
    srcs.forEach((s, k) => { y[s] = H * (k + 1) / (srcs.length + 1); });
    const xOf = (id) => id.startsWith("svc:") ? X.svc : X.src;
    for (const e of sg.edges) {
      if (!(e.dst in y) || !(e.src in y)) continue;
      const cls = e.ejecting ? "ejecting" : (e.success !== null && e.success < 0.99) ? "errors" : e.rps > 0 ? "busy" : "";
      const split = Object.entries(e.split || {}).map(([v, f]) => `${v} ${pct(f)}`).join(" ");
      const label = `${fmt(e.rps)} rps · ${pct(e.success)}\np50 ${fmt(e.p50_ms)} / p99 ${fmt(e.p99_ms)} ms` +
        (split ? `\n${split}` : "") + (e.ejecting ? "\nejection in force" : "");
      const sx = xOf(e.src) === X.svc ? X.svc + 55 : X.src + 50;
      edge(svg, sx, y[e.src], X.svc - 55, y[e.dst], cls, label,
        { "data-edge": `${e.src}->${e.dst}`, "data-p50": e.p50_ms, "data-p99": e.p99_ms, "data-rps": e.rps },
        srcs.length > 1 ? 0.35 : 0.5);
    }
    for (const s of sg.services) {
      for (const v of s.versions) {
        const vid = `ver:${s.name}/${v.name}`;
        edge(svg, X.svc + 55, y["svc:" + s.name], X.ver - 45, y[vid], v.rps > 0 ? "busy" : "",
          `${pct(v.share)} (${fmt(v.rps)} rps)`, { "data-edge": `svc:${s.name}->${vid}`, "data-share": v.share });
        for (const i of v.instances) {
          const ej = i.ejected_by.length > 0;
          edge(svg, X.ver + 45, y[vid], X.inst - 62, y["inst:" + i.name], ej ? "ejecting" : i.rps > 0 ? "busy" : "",
            `${fmt(i.rps)} rps · p99 ${fmt(i.p99_ms)}` + (ej ? "\nEJECTED" : ""), { "data-edge": `${vid}->inst:${i.name}` });
          const cls = "instance" + (ej ? " ejected" : "") + (i.state !== "up" ? " " + i.state : "");
          const sub = i.state !== "up" ? i.state.toUpperCase() : ej ? "ejected by " + i.ejected_by.join(",") : i.host;
          box(svg, X.inst, y["inst:" + i.name], 120, i.name, cls, "inst:" + i.name, sub);
        }
        box(svg, X.ver, y[vid], 80, v.name, "version", vid);
      }
      box(svg, X.svc, y["svc:" + s.name], 100, s.name, "service", "svc:" + s.name);
    }
    for (const s of srcs) box(svg, xOf(s) === X.svc ? X.svc : X.src, y[s], 100, s.replace(/^client:/, ""), "source", s);
  }

  /* ---- control plane: Pilot vs ACKs, etcd members, certificates ---- */
  function table(head, rows) {
    const t = h("table");
    const tr = t.appendChild(h("tr"));
    head.forEach((c) => tr.appendChild(h("th", c)));
    rows.forEach((r) => { const row = t.appendChild(h("tr")); r.forEach((c) => row.appendChild(typeof c === "object" ? c : h("td", String(c)))); });
    return t;
  }
  function drawControl(div, c) {
    clear(div);
    if (!c || (!c.pilot && !c.etcd.length)) { div.appendChild(h("p", "no mesh: section in this topology")); return; }
    const p = c.pilot;
    if (p) {
      div.appendChild(h("div", p.error ? p.error : `Pilot: config version ${p.generation}, registry watch ${p.healthy ? "healthy" : "UNHEALTHY"}; rules: ${(p.rules || []).join(", ") || "none"}`));
      const types = ["clusters", "listeners", "routes", "endpoints"];
      div.appendChild(table(["sidecar", "in sync", "ACKed version (CDS LDS RDS EDS)", "NACKed"], (p.nodes || []).map((n) => [
        n.node, h("td", n.synced ? "yes" : "NO", n.synced ? "verdict-ok" : "verdict-fail"),
        types.map((k) => (n.acked[k] || "-").split("-")[0]).join(" / "), n.nacked.join("; ") || "-"])));
    }
    if (c.etcd.length) {
      div.appendChild(h("div", "etcd members (each member's own view)"));
      div.appendChild(table(["member", "host", "leader it sees", "term", "raft index", "health"], c.etcd.map((m) => [
        m.name + (m.is_leader ? " ★" : ""), m.host, m.leader || "none", m.term ?? "–", m.index ?? "–",
        h("td", m.healthy ? "healthy" : "UNHEALTHY: " + m.errors.join(", "), m.healthy ? "verdict-ok" : "verdict-fail")])));
    }
    if (c.certs && c.certs.length) {
      div.appendChild(h("div", "Citadel certificates (mTLS)"));
      div.appendChild(table(["sidecar", "expires in"], c.certs.map((x) => [x.sidecar,
        x.days === null || x.days === undefined ? "–" : (x.days * 24).toFixed(2) + " h"])));
    }
  }

  /* ---- timeline: fault windows as bars, events as ticks, and the list ---- */
  function drawTimeline(svg, list, state) {
    clear(svg);
    const items = state.timeline || [], spans = state.spans || [];
    const tmax = Math.max(state.t || 0, ...items.map((i) => i.t), ...spans.map((s) => s.t1 || 0), 1);
    const W = 1200, x = (t) => 10 + (W - 20) * t / tmax;
    spans.forEach((s, k) => {
      const row = k % 4;
      const r = el(svg, "rect", { x: x(s.t0), y: 8 + 18 * row, width: Math.max(2, x(s.t1 === null ? tmax : s.t1) - x(s.t0)), height: 14,
        class: "span" + (s.open ? " open" : ""), "data-span": s.label });
      el(r, "title", {}, `${s.label}: ${fmt(s.t0)}–${s.t1 === null ? "now" : fmt(s.t1)} s`);
      el(svg, "text", { x: x(s.t0) + 3, y: 19 + 18 * row, class: "role" }, s.label.slice(0, 50));
    });
    for (const it of items) {
      if (it.kind === "fault") continue;
      const t = el(svg, "line", { x1: x(it.t), x2: x(it.t), y1: 84, y2: 104, class: "tick " + it.cls });
      el(t, "title", {}, `${fmt(it.t)} s ${it.label}`);
    }
    el(svg, "text", { x: 10, y: 117, class: "role" }, "0 s");
    el(svg, "text", { x: W - 10, y: 117, class: "role", "text-anchor": "end" }, fmt(tmax) + " s");
    if (list) {
      clear(list);
      items.slice().sort((a, b) => b.t - a.t).slice(0, 200).forEach((it) => list.appendChild(h("li", `${fmt(it.t, 2)} s  ${it.label}`, it.cls)));
    }
  }

  function render(state) {
    if ($("topology")) $("topology").textContent = state.topology || "";
    if ($("clock")) $("clock").textContent = `t = ${fmt(state.t)} s`;
    drawNetwork($("network"), state.network);
    drawServices($("services"), state.services);
    if ($("control")) drawControl($("control"), state.control);
    drawTimeline($("timeline-chart"), $("timeline"), state);
    if ($("actions-panel") && state.actions === false) $("actions-panel").hidden = true;
    document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
  }

  /* ---- live: SSE, and actions with the token from the URL's fragment ---- */
  function live() {
    const m = /token=([^&]+)/.exec(location.hash);
    if (m) { $("action-token").value = decodeURIComponent(m[1]); history.replaceState(null, "", location.pathname); }
    const es = new EventSource("/events");
    es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "good"; };
    es.onerror = () => { $("conn").textContent = "disconnected (retrying)"; $("conn").className = "bad"; };
    es.onmessage = (ev) => render(JSON.parse(ev.data));
    $("action-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $("action-output");
      out.textContent = "…"; out.className = "";
      const body = { command: $("action-command").value, args: $("action-args").value, yaml: $("action-yaml").value };
      try {
        const r = await fetch("/api/action", { method: "POST", body: JSON.stringify(body),
          headers: { "Content-Type": "application/json", "X-Minimesh-Token": $("action-token").value } });
        const j = await r.json();
        out.textContent = j.output || (j.ok ? "done" : "failed"); out.className = j.ok ? "ok" : "failed";
        out.dataset.ok = String(j.ok);
      } catch (e) { out.textContent = String(e); out.className = "failed"; out.dataset.ok = "false"; }
    });
  }

  window.minimesh = { render };
  const embedded = document.getElementById("report-data");
  if (embedded) render(JSON.parse(embedded.textContent));
  else if ($("action-form")) live();
})();
