"""Galley: validates services and Istio rules together, Istio-style messages.

`analyze(services, rules)` is pure: it returns `Message`s (code, level, file:line).
`analyze_files(paths)` reads topology and rule files (the `minimesh analyze` CLI):
exit code 1 when any Error was found, else 0.

Codes (Istio's where Istio has one, MM0xxx for minimesh's own):
  IST0101 ReferencedResourceNotFound   unknown host, undefined subset     Error
  IST0106 SchemaValidationError        unknown field, bad type/duration   Error
  IST0109 ConflictingMeshGatewayVirtualServiceHosts  two VS, one host     Error
  IST0122 InvalidRegexp                regex does not compile             Error
  IST0130 VirtualServiceUnreachableRule rule after a catch-all rule       Warning
  IST0131 VirtualServiceIneffectiveMatch match duplicates an earlier one  Warning
  MM0001  route weights do not sum to 100                                 Error
  MM0002  kind/field/gateway not supported by minimesh (yet)              Error
  MM0003  duplicate resource (same kind, namespace and name; the later wins) Warning
  MM0004  destination port is not the service's port                      Error
  MM0005  duplicate subset name in a DestinationRule                      Error
  MM0006  subset labels select no declared version of the service         Warning
  MM0007  more than one DestinationRule for a host (the first one wins)   Warning
  MM0008  bad mesh.services declaration in a topology                     Error
  MM0009  file cannot be read or parsed                                   Error
  MM0010  no topology given, host/subset checks skipped                   Info
  IST0004 Deprecated: a field Istio still accepts (applied, same meaning)  Warning
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from testbed.mesh.model import (ERROR, INFO, WARNING, Destination, DestinationRule, Message, ServiceSpec,
                                VersionSpec, VirtualService)
from testbed.mesh.rules.traffic import Rule, parse_rule
from testbed.mesh.rules.yamldoc import Y, load_documents

MESH_SUFFIX = ".svc.cluster.local"


def short_host(host: str) -> str:
    """'reviews', 'reviews.default' and 'reviews.default.svc.cluster.local' -> 'reviews'."""
    if host.endswith(MESH_SUFFIX):
        host = host[: -len(MESH_SUFFIX)]
    parts = host.split(".")
    return parts[0] if len(parts) <= 2 else host


def _msg(code: str, level: str, text: str, rule, line: int) -> Message:
    return Message(code, level, text, rule.file, line, f"{rule.kind} {rule.name}")


def _check_destination(d: Destination, what: str, rule: VirtualService,
                       services: dict[str, ServiceSpec] | None,
                       subsets: dict[str, set[str]]) -> list[Message]:
    if services is None:
        return []
    host = short_host(d.host)
    if host not in services:
        known = ", ".join(sorted(services)) or "none declared"
        return [_msg("IST0101", ERROR, f"Referenced host not found: {d.host!r} in {what} "
                     f"(services: {known})", rule, d.line)]
    out = []
    if d.subset and d.subset not in subsets.get(host, set()):
        have = ", ".join(sorted(subsets.get(host, ()))) or "no DestinationRule subsets"
        out.append(_msg("IST0101", ERROR, f"Referenced host+subset in destinationrule not "
                        f"found: \"{host}+{d.subset}\" in {what} (defined: {have})",
                        rule, d.line))
    if d.port is not None and d.port != services[host].port:
        out.append(_msg("MM0004", ERROR, f"{what}: port {d.port} is not exposed by service "
                        f"{host!r} (port {services[host].port})", rule, d.line))
    return out


def _check_vs(vs: VirtualService, services: dict[str, ServiceSpec] | None,
              subsets: dict[str, set[str]]) -> list[Message]:
    out: list[Message] = []
    if services is not None:
        for h in vs.hosts:
            if short_host(h) not in services:
                out.append(_msg("IST0101", ERROR, f"Referenced host not found: {h!r} in "
                                f"spec.hosts (services: {', '.join(sorted(services))})",
                                vs, vs.hosts_line))
    catch_all_at: int | None = None
    seen_matches: dict = {}
    for i, http in enumerate(vs.http):
        where = f"spec.http[{i}]"
        if catch_all_at is not None:
            out.append(_msg("IST0130", WARNING, f"VirtualService rule #{i} not used (only the "
                            f"last rule can have no matches; rule #{catch_all_at} matches "
                            "every request).", vs, http.line))
        for j, m in enumerate(http.match):
            key = (m.uri, m.headers, m.source_labels)
            if key in seen_matches:
                out.append(_msg("IST0131", WARNING, f"VirtualService rule #{i} match #{j} is "
                                f"not used (duplicate/overlapping match in rule "
                                f"#{seen_matches[key]}).", vs, m.line))
            seen_matches.setdefault(key, i)
        if catch_all_at is None and (not http.match or any(m.is_catch_all
                                                            for m in http.match)):
            catch_all_at = i
        for j, rd in enumerate(http.route):
            out += _check_destination(rd.destination, f"{where}.route[{j}]", vs, services,
                                      subsets)
        if http.mirror:
            out += _check_destination(http.mirror, f"{where}.mirror", vs, services, subsets)
        weights = [rd.weight for rd in http.route]
        given = [w for w in weights if w is not None]
        if len(weights) > 1 and (len(given) < len(weights) or sum(given) != 100):
            shown = ", ".join("unset" if w is None else str(w) for w in weights)
            out.append(_msg("MM0001", ERROR, f"{where}.route weights must all be set and sum "
                            f"to 100; got {shown}", vs, http.line))
        elif len(weights) == 1 and weights[0] not in (None, 100):
            out.append(_msg("MM0001", ERROR, f"{where}.route has one destination with weight "
                            f"{weights[0]}; a single destination takes 100", vs, http.line))
    return out


def _check_dr(dr: DestinationRule, services: dict[str, ServiceSpec] | None) -> list[Message]:
    out: list[Message] = []
    host = short_host(dr.host)
    if services is not None and host not in services:
        out.append(_msg("IST0101", ERROR, f"Referenced host not found: {dr.host!r} in spec.host "
                        f"(services: {', '.join(sorted(services))})", dr, dr.line))
    names: set[str] = set()
    for i, s in enumerate(dr.subsets):
        if s.name in names:
            out.append(_msg("MM0005", ERROR, f"spec.subsets[{i}]: duplicate subset name "
                            f"{s.name!r}", dr, s.line))
        names.add(s.name)
        labels = dict(s.labels)
        svc = (services or {}).get(host)
        if svc is not None and (("version" in labels and labels["version"] not in
                                 svc.version_names) or labels.get("app", host) != host):
            out.append(_msg("MM0006", WARNING, f"spec.subsets[{i}] ({s.name}) labels {labels} "
                            f"select no declared instance of {host!r} (versions: "
                            f"{', '.join(svc.version_names)})", dr, s.line))
    for tp, where in [(dr.traffic_policy, "spec.trafficPolicy")] + [
            (s.traffic_policy, f"spec.subsets[{i}].trafficPolicy")
            for i, s in enumerate(dr.subsets)]:
        if tp and tp.lb_simple and tp.hash_header:
            out.append(_msg("IST0106", ERROR, f"Schema validation error: {where}.loadBalancer: "
                            "give one of simple, consistentHash", dr, dr.line))
    return out


def analyze(services: Sequence[ServiceSpec] | None, rules: Iterable) -> list[Message]:
    """Cross-check rules against services (None = services unknown: skip host checks)."""
    rules = list(rules)
    svc = None if services is None else {s.name: s for s in services}
    out: list[Message] = []
    defined: dict[tuple[str, str, str], Rule] = {}
    latest: dict[tuple[str, str, str], Rule] = {}
    for r in rules:
        key = (r.kind, r.namespace, r.name)
        if key in defined:
            out.append(_msg("MM0003", WARNING, f"duplicate {r.kind} {r.namespace}/{r.name} (first "
                            f"defined at {defined[key].file}:{defined[key].line}); this one replaces "
                            "it, as kubectl apply does", r, r.line))
        defined.setdefault(key, r)
        latest[key] = r
    rules = list(latest.values())
    drs = [r for r in rules if isinstance(r, DestinationRule)]
    subsets: dict[str, set[str]] = defaultdict(set)
    dr_by_host: dict[str, DestinationRule] = {}
    for dr in drs:
        host = short_host(dr.host)
        if host in dr_by_host:
            first = dr_by_host[host]
            out.append(_msg("MM0007", WARNING, f"host {host!r} already has DestinationRule "
                            f"{first.name} ({first.file}:{first.line}); this one is ignored",
                            dr, dr.line))
            continue
        dr_by_host[host] = dr
        subsets[host] |= {s.name for s in dr.subsets}
        out += _check_dr(dr, svc)
    vs_by_host: dict[str, VirtualService] = {}
    for vs in (r for r in rules if isinstance(r, VirtualService)):
        for h in vs.hosts:
            other = vs_by_host.setdefault(short_host(h), vs)
            if other is not vs:
                out.append(_msg("IST0109", ERROR, f"The VirtualServices {other.name}, {vs.name} "
                                f"associated with mesh gateway define the same host {h}; merge "
                                "them into one resource", vs, vs.hosts_line))
        out += _check_vs(vs, svc, subsets)
    return sorted(out, key=lambda m: (m.file, m.line, m.code))


def services_from_mesh(mesh: Y, file: str) -> tuple[list[ServiceSpec], list[Message]]:
    """`mesh.services` of a topology document (the Y node of `mesh`)."""
    out: list[ServiceSpec] = []
    msgs: list[Message] = []

    def bad(y: Y, text: str) -> None:
        msgs.append(Message("MM0008", ERROR, text, file, y.line, "topology mesh.services"))

    services = mesh.v.get("services") if isinstance(mesh.v, dict) else None
    if services is None:
        return out, msgs
    if not isinstance(services.v, dict):
        bad(services, "mesh.services must map service names to {port, run, versions}")
        return out, msgs
    for name, s in services.v.items():
        f = s.v if isinstance(s.v, dict) else {}
        port = f.get("port")
        if port is None or not isinstance(port.v, int) or not 1 <= port.v <= 65535:
            bad(port or s, f"mesh.services.{name}.port: expected a port number 1..65535")
            continue
        versions = []
        vmap = f.get("versions")
        for vname, vy in (vmap.v.items() if vmap and isinstance(vmap.v, dict) else []):
            vf = vy.v if isinstance(vy.v, dict) else {}
            reps = vf.get("replicas")
            hosts = vf.get("hosts")
            if not isinstance(vy.v, dict) or (reps is not None and (
                    not isinstance(reps.v, int) or reps.v < 0)) or (
                    hosts is not None and not isinstance(hosts.v, list)):
                bad(vy, f"mesh.services.{name}.versions.{vname}: expected "
                    "{replicas: <count >= 0>, hosts: [<host>, ...]}")
                continue
            versions.append(VersionSpec(str(vname), reps.v if reps else 1,
                                        tuple(str(h.v) for h in hosts.v) if hosts else ()))
        if vmap is None:
            versions = [VersionSpec("v1")]
        out.append(ServiceSpec(str(name), port.v, tuple(versions),
                               str(f["run"].v) if "run" in f else "", file, s.line))
    return out, msgs


def load_files(paths: Sequence[str]) -> tuple[list[ServiceSpec] | None, list, list[Message]]:
    """Read topology and rule files -> (services or None if no topology, rules, messages)."""
    services: list[ServiceSpec] | None = None
    rules: list = []
    msgs: list[Message] = []
    for path in paths:
        try:
            docs = load_documents(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            mark = getattr(e, "problem_mark", None)
            msgs.append(Message("MM0009", ERROR, f"cannot read: {e}", str(path),
                                mark.line + 1 if mark else 0))
            continue
        for doc in docs:
            top = doc.v if isinstance(doc.v, dict) else {}
            if top and "apiVersion" not in top and "kind" not in top:  # a topology
                if "mesh" not in top:
                    services = services or []
                    continue
                svcs, m = services_from_mesh(top["mesh"], str(path))
                services = (services or []) + svcs
                msgs += m
                inline = top["mesh"].v.get("rules") if isinstance(top["mesh"].v, dict) else None
                docs_in = inline.v if inline is not None and isinstance(inline.v, list) else []
            else:
                docs_in = [doc]
            for d in docs_in:
                if isinstance(d.v, str):  # a rule file named by the topology, relative to it
                    _, sub_rules, m = load_files([str(Path(path).parent / d.v)])
                    rules += sub_rules
                    msgs += m
                    continue
                rule, m = parse_rule(d, str(path))
                msgs += m
                if rule is not None:
                    rules.append(rule)
    return services, rules, msgs


def analyze_files(paths: Sequence[str]) -> tuple[list[Message], int]:
    """`minimesh analyze FILE...`: (messages, exit code 1 if any Error else 0)."""
    services, rules, msgs = load_files(paths)
    if services is None and rules:
        msgs.append(Message("MM0010", INFO, "no topology given: hosts and subsets were not "
                            "checked against services (pass the topology file too)"))
    msgs = sorted(msgs + analyze(services, rules), key=lambda m: (m.file, m.line, m.code))
    return msgs, int(any(m.level == ERROR for m in msgs))
