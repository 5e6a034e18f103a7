"""istioctl's inspection commands for the running mesh, in the ``up`` shell (and so, through
the control socket, as ``minimesh proxy-status``, ``minimesh proxy-config ...``,
``minimesh describe ...``):

    proxy-status [-o json]                                  per sidecar and xDS type: SYNCED, STALE, NOT SENT
    proxy-config clusters|listeners|routes|endpoints|secret NAME [-o json]
    describe SERVICE [-o json]                              rules, subsets, endpoints, mTLS

``proxy-status`` asks Pilot (``GET /proxy-status`` on its admin socket: what each sidecar has
ACKed against what Pilot would send now). ``proxy-config`` reads the sidecar's own admin, as
istioctl does: ``/config_dump`` for clusters, listeners, routes and secrets, ``/clusters``
for endpoints (live health and outlier state); minimesh-proxy and real Envoy answer alike.
``describe`` asks Pilot (``GET /describe``). The formatting is pure and tested on both
sidecars' output; this module registers the commands in :mod:`testbed.cli.shell_commands`.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, Callable, Sequence

from testbed.cli.control import table
from testbed.cli.shell_commands import CLIUsageError, ShellCommand, register_command

__all__ = ["format_proxy_status", "proxy_version", "cluster_rows", "listener_rows", "route_rows", "endpoint_rows",
           "secret_rows", "format_describe", "cli_proxy_status", "cli_proxy_config", "cli_describe",
           "PROXY_CONFIG_TYPES"]

XDS_COLUMNS = ("CDS", "LDS", "EDS", "RDS")


def _split_output(line: str, usage: str) -> tuple[list[str], str]:
    """The words of ``line`` without ``-o json|table`` (kubectl's flag), and the format."""
    words, fmt, out = line.split(), "table", []
    it = iter(words)
    for w in it:
        if w in ("-o", "--output"):
            fmt = next(it, "")
        elif w.startswith(("-o", "--output=")):
            fmt = w.split("=", 1)[1] if "=" in w else w[2:]
        else:
            out.append(w)
            continue
        if fmt not in ("json", "table"):
            raise CLIUsageError(f"-o {fmt!r}: expected json or table; {usage}")
    return out, fmt


def _configs(dump: dict, kind: str) -> dict:
    for c in dump.get("configs", []):
        if str(c.get("@type", "")).endswith("." + kind):
            return c
    return {}


# --- proxy-status ---------------------------------------------------------------------------

def format_proxy_status(body: dict, names: dict[str, str], kinds: dict[str, str]) -> str:
    """istioctl proxy-status's table: NAME, CDS, LDS, EDS, RDS, PILOT (generation), VERSION
    (the sidecar). ``names``: node id -> sidecar name; ``kinds``: sidecar name -> kind."""
    rows: list[tuple[str, ...]] = [("NAME", "NODE", *XDS_COLUMNS, "PILOT", "VERSION")]
    for p in sorted(body.get("proxies", []), key=lambda p: names.get(p["node"], p["node"])):
        name = names.get(p["node"], p["node"].split("~")[2] if p["node"].count("~") == 3 else p["node"])
        cols = []
        for t in XDS_COLUMNS:
            col = p["types"].get(t, {"status": "NOT SENT"})
            nack = any(s.get("error") for s in col.get("subscriptions", []))
            cols.append(col["status"] + (" (NACK)" if nack else ""))
        rows.append((name, p["node"], *cols, f"generation {body.get('generation')}", kinds.get(name, "?")))
    missing = sorted(n for nid, n in names.items() if nid not in {p["node"] for p in body.get("proxies", [])})
    rows += [(n, nid, *["NOT SENT"] * 4, f"generation {body.get('generation')}", kinds.get(n, "?"))
             for nid, n in sorted(names.items()) if n in missing]
    return table(rows)


# --- proxy-config -----------------------------------------------------------------------------

def _cluster_name_parts(name: str) -> tuple[str, str, str, str]:
    """Istio's ``direction|port|subset|host`` -> (host, port, subset, direction); other names whole."""
    parts = name.split("|")
    if len(parts) == 4:
        direction, port, subset, host = parts
        return host, port, subset or "-", direction
    return name, "-", "-", "-"


def cluster_rows(dump: dict) -> list[tuple[str, ...]]:
    """SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, TLS (as istioctl proxy-config clusters; TLS:
    whether the cluster has a transport socket, in place of istioctl's DESTINATION RULE)."""
    c = _configs(dump, "ClustersConfigDump")
    rows: list[tuple[str, ...]] = [("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "TLS")]
    clusters = [x["cluster"] for x in c.get("static_clusters", [])] + \
        [x["cluster"] for x in c.get("dynamic_active_clusters", [])]
    for cl in sorted(clusters, key=lambda cl: _cluster_name_parts(cl.get("name", ""))):
        host, port, subset, direction = _cluster_name_parts(cl.get("name", ""))
        ctype = cl.get("type") or ("EDS" if "eds_cluster_config" in cl else "STATIC")
        tls = "mTLS" if cl.get("transport_socket") else "-"
        rows.append((host, port, subset, direction, ctype, tls))
    return rows


def _chain_destination(chain: dict) -> str:
    for f in chain.get("filters", []):
        cfg = f.get("typed_config", {})
        if "rds" in cfg:
            return f"Route: {cfg['rds'].get('route_config_name', '')}"
        if "route_config" in cfg:
            vhosts = cfg["route_config"].get("virtual_hosts", [])
            clusters = {r.get("route", {}).get("cluster", "") for v in vhosts for r in v.get("routes", [])}
            return "Inline Route: " + ",".join(sorted(c for c in clusters if c)) or "Inline Route"
        if "cluster" in cfg:
            return f"Cluster: {cfg['cluster']}"
    return "-"


def _chain_match(chain: dict) -> str:
    m = chain.get("filter_chain_match") or {}
    parts = []
    if m.get("transport_protocol"):
        parts.append(f"Trans: {m['transport_protocol']}")
    if m.get("application_protocols"):
        parts.append("App: " + ",".join(m["application_protocols"]))
    if m.get("destination_port"):
        parts.append(f"Port: {m['destination_port']}")
    return "; ".join(parts) or "ALL"


def listener_rows(dump: dict) -> list[tuple[str, ...]]:
    """ADDRESS, PORT, MATCH, DESTINATION (one row per filter chain), as istioctl."""
    c = _configs(dump, "ListenersConfigDump")
    listeners = [x["listener"] for x in c.get("static_listeners", [])] + \
        [x.get("active_state", {}).get("listener", {}) for x in c.get("dynamic_listeners", [])]
    rows: list[tuple[str, ...]] = [("NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION")]
    for lst in listeners:
        sa = lst.get("address", {}).get("socket_address", {})
        for chain in lst.get("filter_chains", []) or [{}]:
            rows.append((lst.get("name", ""), str(sa.get("address", "")), str(sa.get("port_value", "")),
                         _chain_match(chain), _chain_destination(chain)))
    return rows


def _route_match(r: dict) -> str:
    m = r.get("match", {})
    path = next((f"{k} {m[k]}" for k in ("path", "prefix", "safe_regex", "regex") if k in m), "")
    if isinstance(m.get("safe_regex"), dict):
        path = f"regex {m['safe_regex'].get('regex', '')}"
    headers = [h.get("name", "") for h in m.get("headers", [])]
    return path + (f" + headers {','.join(headers)}" if headers else "")


def route_rows(dump: dict) -> list[tuple[str, ...]]:
    """NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE (the route's name, Pilot names it
    after its VirtualService), as istioctl proxy-config routes."""
    c = _configs(dump, "RoutesConfigDump")
    configs = [x["route_config"] for x in c.get("static_route_configs", []) + c.get("dynamic_route_configs", [])]
    rows: list[tuple[str, ...]] = [("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE")]
    for rc in configs:
        for vh in rc.get("virtual_hosts", []):
            domains = vh.get("domains", [])
            shown = domains[0] + (f" +{len(domains) - 1} more" if len(domains) > 1 else "") if domains else "*"
            for r in vh.get("routes", []):
                name = r.get("name", "")
                vs, dot, index = name.rpartition(".")       # Pilot names a route <VirtualService>.<index>
                row = (rc.get("name", ""), vh.get("name", ""), shown, _route_match(r),
                       vs if dot and index.isdigit() else name if name and name != "default" else "-")
                if row not in rows:        # Envoy lists an inline route once per filter chain
                    rows.append(row)
    return rows


def endpoint_rows(clusters: dict) -> list[tuple[str, ...]]:
    """ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER from ``/clusters?format=json`` (as istioctl)."""
    rows: list[tuple[str, ...]] = [("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER")]
    for c in sorted(clusters.get("cluster_statuses", []), key=lambda c: c.get("name", "")):
        for h in c.get("host_statuses", []):
            sa = h.get("address", {}).get("socket_address", {})
            hs = h.get("health_status", {})
            rows.append((f"{sa.get('address', '')}:{sa.get('port_value', '')}",
                         hs.get("eds_health_status", "HEALTHY"),
                         "FAILED" if hs.get("failed_outlier_check") else "OK", c.get("name", "")))
    return rows


def _pem(source: dict) -> bytes:
    if "inline_bytes" in source:
        return base64.b64decode(source["inline_bytes"])
    return str(source.get("inline_string", "")).encode()


def secret_rows(dump: dict, now: dt.datetime | None = None) -> list[tuple[str, ...]]:
    """RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL NUMBER, NOT AFTER, NOT BEFORE, as istioctl."""
    from cryptography import x509     # late: only this command parses certificates
    now = now or dt.datetime.now(dt.timezone.utc)
    rows: list[tuple[str, ...]] = [("RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER",
                                    "NOT AFTER", "NOT BEFORE")]
    for s in _configs(dump, "SecretsConfigDump").get("dynamic_active_secrets", []):
        secret = s.get("secret", {})
        if "tls_certificate" in secret:
            kind, pem = "Cert Chain", _pem(secret["tls_certificate"].get("certificate_chain", {}))
        else:
            kind, pem = "CA", _pem(secret.get("validation_context", {}).get("trusted_ca", {}))
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            rows.append((s.get("name", ""), kind, "ACTIVE", "false", "-", "-", "-"))
            continue
        after, before = (t.replace(tzinfo=dt.timezone.utc) for t in (cert.not_valid_after, cert.not_valid_before))
        row = (s.get("name", ""), kind, "ACTIVE", str(before <= now <= after).lower(),
               f"{cert.serial_number:x}", after.strftime("%Y-%m-%dT%H:%M:%SZ"), before.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if row not in rows:         # Envoy lists a secret once per SDS subscription (listener, clusters)
            rows.append(row)
    return rows


# kind -> (admin path, table, the config dump section -o json prints; None: the whole answer)
PROXY_CONFIG_TYPES: dict[str, tuple[str, Callable[[dict], list[tuple[str, ...]]], str | None]] = {
    "clusters": ("/config_dump", cluster_rows, "ClustersConfigDump"),
    "listeners": ("/config_dump", listener_rows, "ListenersConfigDump"),
    "routes": ("/config_dump", route_rows, "RoutesConfigDump"),
    "endpoints": ("/clusters?format=json", endpoint_rows, None),
    "secret": ("/config_dump", secret_rows, "SecretsConfigDump"),
}
ALIASES = {"cluster": "clusters", "listener": "listeners", "route": "routes", "endpoint": "endpoints",
           "secrets": "secret"}


# --- describe ---------------------------------------------------------------------------------

def _describe_routes(vs: dict) -> list[str]:
    out = [f"VirtualService: {vs['name']}  ({vs['where']})"]
    for r in vs["routes"]:
        dests = ", ".join(f"{d['host']}{'/' + d['subset'] if d['subset'] else ''}"
                          f"{' ' + str(d['weight']) + '%' if d['weight'] is not None else ''}" for d in r["route"])
        extra = ""
        if "timeout_ms" in r:
            extra += f"; timeout {r['timeout_ms']} ms"
        if "retries" in r:
            per_try = r["retries"].get("per_try_timeout_ms")
            extra += f"; retries {r['retries']['attempts']}" + (f" x {per_try} ms" if per_try else "")
        f = r.get("fault") or {}
        if f.get("delay_ms") is not None:
            extra += f"; fault delay {f['delay_ms']} ms ({f.get('delay_percent', 100):g}%)"
        if f.get("abort_status") is not None:
            extra += f"; fault abort {f['abort_status']} ({f.get('abort_percent', 100):g}%)"
        out.append(f"   when {' or '.join(r['match'])} -> {dests}{extra}")
    return out


def format_describe(d: dict) -> str:
    s = d["service"]
    lines = [f"Service: {s['name']}", f"   Port: http {s['port']}/HTTP", f"   Versions: {', '.join(s['versions'])}",
             "Endpoints:"]
    lines += [f"   {e['instance']} ({e['version']}) on {e['host']} at {e['address']}" for e in d["endpoints"]] \
        or ["   none registered"]
    for dr in d["destination_rules"]:
        lines.append(f"DestinationRule: {dr['name']}  ({dr['where']})")
        lines += [f"   subset {sub['name']} {','.join(f'{k}={v}' for k, v in sub['labels'].items())}: "
                  f"{', '.join(sub['endpoints']) or 'NO ENDPOINTS'}" for sub in dr["subsets"]]
    if not d["destination_rules"]:
        lines.append("DestinationRule: none (no subsets)")
    for vs in d["virtual_services"]:
        lines += _describe_routes(vs)
    if not d["virtual_services"]:
        lines.append("VirtualService: none (round robin over every endpoint)")
    m = d["mtls"]
    modes = ", ".join(f"{v} {mode}" for v, mode in m["server"].items())
    lines.append(f"mTLS (server side, PeerAuthentication): {modes}"
                 + (f"  [{', '.join(m['peer_authentications'])}]" if m["peer_authentications"] else "  [default]"))
    tls = sorted({"mTLS" if on else "plaintext" for on in m["clients"].values()})
    lines.append(f"mTLS (clients, auto): {' / '.join(tls) or 'no outbound cluster'}")
    lines.append("AuthorizationPolicies: " + (", ".join(d["authorization_policies"]) or "none"))
    return "\n".join(lines) + "\n"


# --- the shell commands ------------------------------------------------------------------------

def _need_mesh(mesh: Any, command: str) -> Any:
    if mesh is None:
        raise CLIUsageError(f"{command}: this topology has no mesh: section")
    return mesh


def _admin_get(mesh: Any, url: str, command: str) -> Any:
    from testbed.mesh.pilot.process import AdminUnavailable
    try:
        status, body = mesh.admin.request("GET", url)
    except AdminUnavailable as e:
        raise CLIUsageError(f"{command}: cannot reach Pilot: {e}") from None
    if status != 200:
        raise CLIUsageError(f"{command}: {body.get('error') if isinstance(body, dict) else body}")
    return body


def proxy_version(server_info: dict) -> str:
    """The VERSION column from a sidecar's ``/server_info``: ``envoy 1.40.0`` (Envoy's
    ``sha/1.40.0/Clean/RELEASE/BoringSSL``) or ``minimesh-proxy 0.1.0``."""
    v = str(server_info.get("version", ""))
    if v.startswith("minimesh-proxy/"):
        return "minimesh-proxy " + v.split("/", 1)[1]
    parts = v.split("/")
    return f"envoy {parts[1]}" if len(parts) >= 2 else v or "?"


def _kinds(mesh: Any) -> dict[str, str]:
    """Sidecar name -> its version, asked of its admin (``/server_info``); the configured kind
    when it does not answer."""
    from testbed.mesh.deploy.mesh import MeshError     # late: the deployment loads cryptography
    kinds = {i.instance: f"{'envoy' if i.sidecar == 'envoy' else 'minimesh-proxy'}" for i in mesh.instances()}
    for name in mesh.sidecar_nodes():
        kinds.setdefault(name, "envoy" if mesh.sidecar_default == "envoy" else "minimesh-proxy")
        try:
            kinds[name] = proxy_version(json.loads(mesh.sidecar_admin(name, "/server_info")))
        except (MeshError, ValueError, AttributeError):
            pass
    return kinds


def cli_proxy_status(mesh: Any, line: str) -> str:
    words, fmt = _split_output(line, "usage: proxy-status [-o json]")
    if words:
        raise CLIUsageError("usage: proxy-status [-o json]")
    body = _admin_get(_need_mesh(mesh, "proxy-status"), "/proxy-status", "proxy-status")
    names = {nid: n for n, nid in mesh.sidecar_nodes().items()}
    if fmt == "json":
        for p in body.get("proxies", []):
            p["name"] = names.get(p["node"], "")
        return json.dumps(body, indent=1) + "\n"
    return format_proxy_status(body, names, _kinds(mesh))


def cli_proxy_config(mesh: Any, line: str) -> str:
    usage = f"usage: proxy-config {'|'.join(PROXY_CONFIG_TYPES)} NAME [-o json]"
    words, fmt = _split_output(line, usage)
    if len(words) != 2 or ALIASES.get(words[0], words[0]) not in PROXY_CONFIG_TYPES:
        raise CLIUsageError(usage)
    kind, name = ALIASES.get(words[0], words[0]), words[1]
    sidecars = sorted(_need_mesh(mesh, "proxy-config").sidecar_nodes())
    if name not in sidecars:
        raise CLIUsageError(f"proxy-config: no running sidecar {name!r}; sidecars: {', '.join(sidecars)}")
    path, rows, section = PROXY_CONFIG_TYPES[kind]
    from testbed.mesh.deploy.mesh import MeshError     # late: the deployment loads cryptography
    try:
        text = mesh.sidecar_admin(name, path)
        body = json.loads(text)
    except (MeshError, ValueError) as e:
        raise CLIUsageError(f"proxy-config: {name}'s admin {path}: {e}") from None
    if fmt == "json":
        return json.dumps(_configs(body, section) if section else body, indent=1) + "\n"
    return table(rows(body))


def cli_describe(mesh: Any, line: str) -> str:
    words, fmt = _split_output(line, "usage: describe SERVICE [-o json]")
    if len(words) != 1:
        raise CLIUsageError("usage: describe SERVICE [-o json]")
    from urllib.parse import quote
    body = _admin_get(_need_mesh(mesh, "describe"), f"/describe?service={quote(words[0])}", "describe")
    return json.dumps(body, indent=1) + "\n" if fmt == "json" else format_describe(body)


def _register(commands: Sequence[ShellCommand]) -> None:
    for c in commands:
        register_command(c)


_register([
    ShellCommand("proxy-status", "Each sidecar's xDS sync with Pilot (SYNCED, STALE, NOT SENT), as istioctl "
                 "proxy-status. Usage: proxy-status [-o json]", cli_proxy_status),
    ShellCommand("proxy-config", "A sidecar's config from its own admin (/config_dump, /clusters), as istioctl "
                 "proxy-config. Usage: proxy-config clusters|listeners|routes|endpoints|secret NAME [-o json]",
                 cli_proxy_config),
    ShellCommand("describe", "A service's rules, subsets, endpoints and mTLS, as istioctl x describe. "
                 "Usage: describe SERVICE [-o json]", cli_describe),
])
