"""The ``mesh:`` section of a topology: validated, frozen, with every instance placed.

    topo = load_topology("topologies/mesh-echo.yaml")   # this module registers `mesh:`
    mesh = topo.sections["mesh"]                          # a MeshSpec
    for inst in mesh.instances: ...                       # service, version, host, ports

Schema: docs/topology.md ("mesh section"). Errors are ``TopologyError``s at the
offending node's ``file:line`` (via :class:`testbed.topology.load.Context`). Placement is
decided here, not at deploy time, so ``minimesh analyze`` and the deployer agree:
replicas without ``hosts:`` go round-robin over the hosts that are neither registry
members nor the control-plane host, skipping hosts whose service port is taken.
"""
from __future__ import annotations

import ipaddress
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from yaml.nodes import Node

from testbed.mesh.model import ServiceSpec, VersionSpec, service_vips
from testbed.topology.load import register_section
from testbed.topology.reader import Context

__all__ = ["MeshSpec", "RegistrySpec", "SecuritySpec", "ServiceDecl", "InstanceSpec", "parse_mesh", "needs_citadel",
           "SIDECARS", "BUILTIN_APPS", "VIP_CIDR", "app_argv", "mesh_names", "CITADEL_PORT", "SECURITY_KINDS"]

SIDECARS = ("minimesh", "envoy")
VIP_CIDR = "10.96.0.0/16"
BUILTIN_APPS = ("echo", "productpage", "details", "reviews", "ratings")
APP_PORT_BASE = 20000     # the k-th instance on a host: app on 127.0.0.1:20000+k
ADMIN_PORT_BASE = 15000   # ... its sidecar admin on 127.0.0.1:15000+100k
OUTBOUND_PORT = 15001     # the host's capture sidecar (k = 0 or the client sidecar)
PILOT_PORT = 15010
CITADEL_PORT = 15012      # Citadel on the control-plane host (mesh.security)
MESH_FIELDS = ("registry", "control_plane", "services", "clients", "rules", "security")
SECURITY_FIELDS = ("citadel", "auto_mtls", "cert_ttl_s", "renew_fraction", "trust_domain", "keylog")
SECURITY_KINDS = ("PeerAuthentication", "AuthorizationPolicy")
REGISTRY_FIELDS = ("members", "heartbeat_ms", "election_ms", "ttl_s")
SERVICE_FIELDS = ("port", "run", "sidecar", "versions")
VERSION_FIELDS = ("replicas", "hosts")
RESERVED_PORTS = (ADMIN_PORT_BASE, OUTBOUND_PORT, PILOT_PORT, CITADEL_PORT, 2379, 2380)


@dataclass(frozen=True)
class RegistrySpec:
    members: tuple[str, ...]
    heartbeat_ms: int = 100
    election_ms: int = 1000
    ttl_s: int = 5


@dataclass(frozen=True)
class SecuritySpec:
    """``mesh.security``: Citadel on the control-plane host and what sidecars ask of it.
    Citadel runs in every mesh, as Istio's CA is part of every control plane; ``citadel:
    false`` opts out. ``auto_mtls``: mTLS between sidecars before any security rule
    (docs/security.md, "auto mTLS"). ``keylog_dir`` is set by ``minimesh up --capture``,
    not by YAML: the key logs then outlive the mesh's run directory."""
    citadel: bool = True
    auto_mtls: bool = False
    cert_ttl_s: float = 3600.0
    renew_fraction: float = 0.5
    trust_domain: str = "cluster.local"
    keylog: bool = False
    keylog_dir: str = ""


@dataclass(frozen=True)
class ServiceDecl:
    name: str
    port: int
    run: str
    sidecar: str | None          # None: the deployer's default (minimesh-proxy)
    versions: tuple[VersionSpec, ...]
    line: int


@dataclass(frozen=True)
class InstanceSpec:
    service: str
    version: str
    instance: str                # "<service>-<version>-<i>"
    host: str
    ip: str                      # the host's address (inbound listener, registry)
    port: int                    # the service port (sidecar inbound listener)
    app_port: int                # the app's 127.0.0.1 port
    slot: int                    # k-th instance on its host
    run: str
    sidecar: str | None

    @property
    def admin_port(self) -> int:
        return ADMIN_PORT_BASE + 100 * self.slot

    @property
    def outbound_port(self) -> int:
        return OUTBOUND_PORT + 100 * self.slot


@dataclass(frozen=True)
class MeshSpec:
    registry: RegistrySpec
    control_plane: str
    services: tuple[ServiceDecl, ...]
    instances: tuple[InstanceSpec, ...]
    clients: tuple[str, ...]
    rules: tuple[str, ...]       # paths, resolved against the topology file's directory
    vips: tuple[tuple[str, str], ...]
    source: str = ""
    security: SecuritySpec = SecuritySpec()

    def service_specs(self) -> tuple[ServiceSpec, ...]:
        """What Pilot and Galley take (model.ServiceSpec)."""
        return tuple(ServiceSpec(s.name, s.port, s.versions, s.run, self.source, s.line)
                     for s in self.services)

    @property
    def mesh_hosts(self) -> tuple[str, ...]:
        """Hosts with a sidecar capturing outbound traffic (instances or clients), in order."""
        seen = dict.fromkeys([i.host for i in self.instances] + list(self.clients))
        return tuple(seen)

    @property
    def client_sidecar_hosts(self) -> tuple[str, ...]:
        """Client hosts without an instance: they get a client-only sidecar."""
        busy = {i.host for i in self.instances}
        return tuple(h for h in self.clients if h not in busy)


def mesh_names(spec: MeshSpec, ip_of: Callable[[str], str]) -> dict[str, str]:
    """Wireshark labels for the mesh's addresses (``ip_of(host)`` -> address): each
    instance's name, ``pilot``, ``<service>-vip``, ``etcd-<member>``."""
    names = {i.ip: i.instance for i in spec.instances}
    names[ip_of(spec.control_plane)] = "pilot"
    names.update({str(vip): f"{service}-vip" for service, vip in spec.vips})
    for m in spec.registry.members:
        names.setdefault(ip_of(m), f"etcd-{m}")
    return names


def app_argv(run: str, inst: InstanceSpec, python: str = sys.executable) -> list[str]:
    """The app's command line: ``builtin:<name>`` or a template with {port} {service}
    {version} {instance} ({port} is the app's own 127.0.0.1 port)."""
    if run.startswith("builtin:"):
        name = run.split(":", 1)[1]
        module = "testbed.apps.echo" if name == "echo" else "testbed.apps.bookinfo"
        extra = [] if name == "echo" else ["--app", name]
        return [python, "-m", module, *extra, "--bind", "127.0.0.1", "--port", str(inst.app_port),
                "--service", inst.service, "--version", inst.version, "--instance", inst.instance,
                "--node", inst.host]
    fields = {"port": inst.app_port, "service": inst.service, "version": inst.version,
              "instance": inst.instance}
    return [word.format(**fields) for word in shlex.split(run)]


# --- parsing -----------------------------------------------------------------------

def parse_mesh(node: Node, ctx: Context) -> MeshSpec:
    top = ctx.mapping(node, "mesh", MESH_FIELDS, required=("registry", "control_plane", "services"),
                      null_ok=False)
    registry = _registry(ctx, top["registry"][1])
    cp_fields = ctx.mapping(top["control_plane"][1], "mesh.control_plane", ("host",),
                            required=("host",), null_ok=False)
    cp = ctx.linked_host(cp_fields["host"][1], "mesh.control_plane.host")
    clients = tuple(ctx.linked_host(n, f"mesh.clients[{i}]")
                    for i, n in enumerate(ctx.sequence(top["clients"][1], "mesh.clients"))) \
        if "clients" in top else ()
    rules = _rules(ctx, top["rules"][1]) if "rules" in top else ()
    security = _security(ctx, top["security"][1] if "security" in top else None, rules)
    services, vnodes = _services(ctx, top["services"][1])
    for name, spec in ctx.hosts.items():
        if ipaddress.ip_interface(spec.ip).ip in ipaddress.ip_network(VIP_CIDR):
            ctx.error(top["services"][0], f"mesh: host {name}'s address {spec.ip} is inside the "
                                          f"service VIP range {VIP_CIDR}; pick another ip_base")
    pool = [h for h in ctx.hosts if h not in registry.members and h != cp and h not in clients
            and h in ctx.linked]          # a host without a link can serve no one
    instances = _place(ctx, services, vnodes, pool)
    vips = tuple(sorted(service_vips([s.name for s in services], VIP_CIDR).items()))
    return MeshSpec(registry, cp, services, instances, clients, rules, vips, ctx.file, security)


def _registry(ctx: Context, node: Node) -> RegistrySpec:
    f = ctx.mapping(node, "mesh.registry", REGISTRY_FIELDS, required=("members",), null_ok=False)
    items = ctx.sequence(f["members"][1], "mesh.registry.members")
    if not items:
        ctx.error(f["members"][1], "mesh.registry.members: list at least one host (3 for a quorum)")
    members: list[str] = []
    for i, n in enumerate(items):
        name = ctx.linked_host(n, f"mesh.registry.members[{i}]")
        if name in members:
            ctx.error(n, f"mesh.registry.members[{i}]: {name} is listed twice")
        members.append(name)
    kw = {k: ctx.integer(f[k][1], f"mesh.registry.{k}", 1) for k in REGISTRY_FIELDS[1:] if k in f}
    spec = RegistrySpec(tuple(members), **kw)
    if not 5 * spec.heartbeat_ms <= spec.election_ms <= 50000:
        where = f.get("election_ms", f.get("heartbeat_ms", (None, node)))[1]
        ctx.error(where, f"mesh.registry.election_ms: {spec.election_ms} must be between 5 x "
                         f"heartbeat_ms ({5 * spec.heartbeat_ms}) and 50000 (etcd's rule)")
    if spec.ttl_s * 1000 < 2 * spec.election_ms:
        ctx.error(f.get("ttl_s", (None, node))[1],
                  f"mesh.registry.ttl_s: {spec.ttl_s} s must be at least 2 x election_ms "
                  f"({2 * spec.election_ms} ms); etcd leases only expire on a leader")
    return spec


def _rules(ctx: Context, node: Node) -> tuple[str, ...]:
    base = Path(ctx.file).parent if not ctx.file.startswith("<") else Path(".")
    out = []
    for i, n in enumerate(ctx.sequence(node, "mesh.rules")):
        raw = ctx.text(n, f"mesh.rules[{i}]", "a rule file path (relative to the topology file)")
        path = base / raw
        if not path.is_file():
            ctx.error(n, f"mesh.rules[{i}]: no such file {str(path)!r}")
        out.append(str(path))
    return tuple(out)


def security_rule_kinds(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, kind) of every rule that needs Citadel in the rule files: PeerAuthentication,
    AuthorizationPolicy, and a DestinationRule with ``tls.mode: ISTIO_MUTUAL`` (unreadable
    files are skipped here: Galley reports them)."""
    out = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError):
            continue
        out += [(path, d["kind"]) for d in docs if isinstance(d, dict) and needs_citadel(d)]
    return out


def needs_citadel(doc: dict) -> bool:
    """A rule (a plain YAML mapping) that only works with Citadel's certificates."""
    if doc.get("kind") in SECURITY_KINDS:
        return True
    if doc.get("kind") != "DestinationRule" or not isinstance(doc.get("spec"), dict):
        return False
    spec = doc["spec"]
    policies = [spec.get("trafficPolicy")] + [s.get("trafficPolicy") for s in spec.get("subsets") or ()
                                              if isinstance(s, dict)]
    return any(isinstance(p, dict) and isinstance(p.get("tls"), dict)
               and p["tls"].get("mode") == "ISTIO_MUTUAL" for p in policies)


def _security(ctx: Context, node: Node | None, rules: tuple[str, ...]) -> SecuritySpec:
    """``mesh.security``; Citadel is on unless ``citadel: false`` (docs/topology.md)."""
    listed = security_rule_kinds(rules)
    if node is None or (isinstance(node, yaml.ScalarNode) and ctx.scalar(node, "mesh.security") is None):
        return SecuritySpec()
    f = ctx.mapping(node, "mesh.security", SECURITY_FIELDS)
    kw: dict = {"citadel": True}
    for key in ("citadel", "auto_mtls", "keylog"):
        if key in f:
            v = ctx.scalar(f[key][1], f"mesh.security.{key}")
            if not isinstance(v, bool):
                ctx.error(f[key][1], f"mesh.security.{key}: {v!r} is not a boolean; use true or false")
            kw[key] = v
    for key, lo, hi in (("cert_ttl_s", 1.0, 86400.0), ("renew_fraction", 0.05, 0.95)):
        if key in f:
            v = ctx.scalar(f[key][1], f"mesh.security.{key}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                ctx.error(f[key][1], f"mesh.security.{key}: {v!r} must be a number from {lo:g} to {hi:g}")
            kw[key] = float(v)
    if "trust_domain" in f:
        td = ctx.text(f["trust_domain"][1], "mesh.security.trust_domain", "a trust domain")
        if td != "cluster.local":   # Pilot's client-side SAN check assumes it (pilot/security.py)
            ctx.error(f["trust_domain"][1], f"mesh.security.trust_domain: {td!r} is not supported yet; "
                                            "allowed: cluster.local")
        kw["trust_domain"] = td
    spec = SecuritySpec(**kw)
    if listed and not spec.citadel:
        path, kind = listed[0]
        ctx.error(f["citadel"][1], f"mesh.security.citadel: false, but {path} holds a {kind}; "
                                   "security rules need Citadel (set citadel: true or drop the rule)")
    if spec.auto_mtls and not spec.citadel:
        ctx.error(f["auto_mtls"][1], "mesh.security.auto_mtls: true needs Citadel, but citadel: false "
                                     "opts out of it")
    return spec


def _services(ctx: Context, node: Node) -> tuple[tuple[ServiceDecl, ...], dict[tuple[str, str], Node]]:
    """The declarations, and the node of each (service, version) for placement errors."""
    entries = ctx.mapping(node, "mesh.services", null_ok=False)
    if not entries:
        ctx.error(node, "mesh.services: declare at least one service")
    out = []
    nodes: dict[tuple[str, str], Node] = {}
    for name, (key_node, value_node) in entries.items():
        where = f"mesh.services.{name}"
        if not name.replace("-", "").replace("_", "").isalnum() or "/" in name:
            ctx.error(key_node, f"{where}: service names use letters, digits, - and _")
        f = ctx.mapping(value_node, where, SERVICE_FIELDS, required=("port", "run"), null_ok=False)
        port = ctx.integer(f["port"][1], f"{where}.port", 1)
        if port > 65535 or port in RESERVED_PORTS or APP_PORT_BASE <= port < APP_PORT_BASE + 100:
            ctx.error(f["port"][1], f"{where}.port: {port} is not usable; use 1..65535 except "
                      f"{', '.join(map(str, RESERVED_PORTS))} and the app ports "
                      f"{APP_PORT_BASE}..{APP_PORT_BASE + 99}")
        run = ctx.text(f["run"][1], f"{where}.run", "builtin:<app> or a command line")
        _check_run(ctx, f["run"][1], f"{where}.run", run)
        sidecar = None
        if "sidecar" in f:
            sidecar = ctx.text(f["sidecar"][1], f"{where}.sidecar", "a sidecar kind")
            if sidecar not in SIDECARS:
                ctx.error(f["sidecar"][1], f"{where}.sidecar: unknown sidecar {sidecar!r}; "
                                           f"allowed: {', '.join(SIDECARS)}")
        versions: tuple[VersionSpec, ...] = (VersionSpec("v1"),)
        nodes[name, "v1"] = key_node
        if "versions" in f:
            vmap = ctx.mapping(f["versions"][1], f"{where}.versions", null_ok=False)
            nodes.update({(name, v): vnode for v, (_, vnode) in vmap.items()})
            versions = _versions(ctx, f["versions"][1], where)
        out.append(ServiceDecl(name, port, run, sidecar, versions, ctx.line(key_node)))
    return tuple(out), nodes


def _check_run(ctx: Context, node: Node, where: str, run: str) -> None:
    if run.startswith("builtin:"):
        name = run.split(":", 1)[1]
        if name not in BUILTIN_APPS:
            ctx.error(node, f"{where}: unknown built-in app {name!r}; built-ins: "
                            + ", ".join(f"builtin:{b}" for b in BUILTIN_APPS))
        return
    try:
        words = shlex.split(run)
        for w in words:
            w.format(port=0, service="", version="", instance="")
    except (ValueError, KeyError, IndexError) as e:
        ctx.error(node, f"{where}: cannot use command line {run!r} ({e}); placeholders: "
                        "{port} {service} {version} {instance}")
    if not words:
        ctx.error(node, f"{where}: empty command line")


def _versions(ctx: Context, node: Node, where: str) -> tuple[VersionSpec, ...]:
    entries = ctx.mapping(node, f"{where}.versions", null_ok=False)
    if not entries:
        ctx.error(node, f"{where}.versions: declare at least one version, e.g. v1: {{replicas: 1}}")
    out = []
    for vname, (_, vnode) in entries.items():
        vw = f"{where}.versions.{vname}"
        if "/" in vname:
            ctx.error(vnode, f"{vw}: a version name may not contain '/'")
        f = ctx.mapping(vnode, vw, VERSION_FIELDS)
        replicas = 1
        if "replicas" in f:
            replicas = ctx.integer(f["replicas"][1], f"{vw}.replicas", 1)
        hosts: tuple[str, ...] = ()
        if "hosts" in f:
            items = ctx.sequence(f["hosts"][1], f"{vw}.hosts")
            if not items:
                ctx.error(f["hosts"][1], f"{vw}.hosts: list at least one host, or leave hosts out")
            hosts = tuple(ctx.linked_host(n, f"{vw}.hosts[{i}]") for i, n in enumerate(items))
        out.append(VersionSpec(vname, replicas, hosts))
    return tuple(out)


def _place(ctx: Context, services: tuple[ServiceDecl, ...], vnodes: dict[tuple[str, str], Node],
           pool: list[str]) -> tuple[InstanceSpec, ...]:
    """Placed replicas on their hosts (cycling), the others round-robin over ``pool``."""
    taken: dict[tuple[str, int], str] = {}       # (host, port) -> instance
    per_host: dict[str, int] = {}
    out: list[InstanceSpec] = []
    cursor = 0

    def add(svc: ServiceDecl, v: VersionSpec, i: int, host: str, node: Node) -> None:
        name = f"{svc.name}-{v.name}-{i}"
        if (host, svc.port) in taken:
            ctx.error(node, f"mesh.services.{svc.name}.versions.{v.name}: port clash on host {host}: "
                            f"{name} and {taken[host, svc.port]} both need port {svc.port} "
                            "(one sidecar inbound listener per host and port)")
        taken[host, svc.port] = name
        slot = per_host.get(host, 0)
        per_host[host] = slot + 1
        ip = str(ipaddress.ip_interface(ctx.hosts[host].ip).ip)
        out.append(InstanceSpec(svc.name, v.name, name, host, ip, svc.port,
                                APP_PORT_BASE + slot, slot, svc.run, svc.sidecar))

    for placed in (True, False):  # placed replicas claim their hosts first
        for svc in services:
            for v in svc.versions:
                if bool(v.hosts) != placed:
                    continue
                node = vnodes[svc.name, v.name]
                for i in range(v.replicas):
                    if v.hosts:
                        add(svc, v, i, v.hosts[i % len(v.hosts)], node)
                        continue
                    if not pool:
                        ctx.error(node, f"mesh.services.{svc.name}.versions.{v.name}: no host to "
                                        "place replicas on: every linked host is a registry member, "
                                        "a client or the control plane; add hosts or give hosts: [...]")
                    for step in range(len(pool)):
                        host = pool[(cursor + step) % len(pool)]
                        if (host, svc.port) not in taken:
                            cursor = (cursor + step + 1) % len(pool)
                            break
                    else:
                        ctx.error(node, f"mesh.services.{svc.name}.versions.{v.name}: port clash: "
                                        f"every eligible host ({', '.join(pool)}) already has port "
                                        f"{svc.port} taken; add hosts or lower replicas")
                    add(svc, v, i, host, node)
    order = {(s.name, v.name): k for k, (s, v) in
             enumerate((s, v) for s in services for v in s.versions)}
    return tuple(sorted(out, key=lambda x: (order[x.service, x.version], int(x.instance.rsplit("-", 1)[1]))))


register_section("mesh", parse_mesh)
