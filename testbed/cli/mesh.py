"""Mesh subcommands: ``minimesh apply -f FILE``, ``minimesh analyze FILE...``,
``minimesh registry [list]``; and the mesh part of ``minimesh up`` (the Mininet CLI's
``apply FILE``, ``delete -f FILE``, ``get KIND [NAME] [-o yaml|json]`` and ``registry``
commands, and starting the mesh of a topology that has a ``mesh:`` section).

``apply`` and ``registry`` talk to the running ``up`` through Pilot's admin unix socket
(``<state dir>/mesh-*/pilot.sock``, published in ``<state dir>/mesh/<pid>.json``); a unix
socket is reachable from the root namespace, so no command has to enter a Mininet host.
Importing this module registers the topology's ``mesh:`` section (testbed.mesh.spec), and
the shell's ``apply`` and ``registry`` commands and mesh session (testbed.cli.shell_commands).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
from testbed.cli.shell_commands import (CLIUsageError, ShellCommand, register_command,
                                        register_mesh_session)
from testbed.cli.subcommand import EXIT_USAGE, Subcommand
from testbed.net.lifecycle import EXIT_FAIL, EXIT_OK
from testbed.mesh.model import ERROR, INFO, Message
from testbed.mesh.pilot.process import AdminClient, AdminUnavailable
from testbed.net.running import RunningTestbed
from testbed.topology.load import load_topology
from testbed.topology.spec import TopologyError

__all__ = ["SUBCOMMANDS", "mesh_session", "cli_apply", "cli_registry", "cli_delete", "cli_get", "analyze_paths",
           "analyze_messages", "message_json", "format_registry", "format_get", "parse_get", "default_sidecar"]


# --- analyze ------------------------------------------------------------------------------

def analyze_paths(paths: Sequence[str]) -> tuple[list[str], int]:
    """Galley over topologies (their mesh.services and mesh.rules files, fully validated by
    the topology loader) and rule files: (formatted messages, exit code 1 on any Error)."""
    msgs = analyze_messages(paths)
    return [m.format() for m in msgs], int(any(m.level == ERROR for m in msgs))


def message_json(m: Message) -> dict:
    """One message as ``istioctl analyze -o json`` prints it (plus file and line apart)."""
    return {"code": m.code, "level": m.level, "message": m.text, "origin": m.resource,
            "reference": f"{m.file}:{m.line}" if m.file else "", "file": m.file, "line": m.line}


def analyze_messages(paths: Sequence[str]) -> list[Message]:
    """The messages of :func:`analyze_paths`, sorted by file, line and code."""
    from testbed.mesh.rules.galley import analyze, load_files  # late: keeps `minimesh` start-up and --help light
    services: list | None = None
    rule_files: list[str] = []
    topology_rules: list[str] = []
    msgs: list[Message] = []
    for path in paths:
        if _is_topology(path):
            try:
                topo = load_topology(path)
            except TopologyError as e:
                msgs.append(Message("MM0008", ERROR, e.message, e.file, e.line or 0, "topology"))
                services = services or []
                continue
            mesh = topo.sections.get("mesh")
            services = (services or []) + list(mesh.service_specs() if mesh else ())
            topology_rules += list(mesh.rules if mesh else ())
        else:
            rule_files.append(path)
    _, base, msgs_base = load_files(topology_rules)
    _, rules, rule_msgs = load_files(rule_files)
    msgs += msgs_base + rule_msgs
    # the files given are applied on top of the topology's rules: same kind/namespace/name replaces
    given = {(r.kind, r.namespace, r.name) for r in rules}
    rules = [r for r in base if (r.kind, r.namespace, r.name) not in given] + rules
    if services is None and rules:
        msgs.append(Message("MM0010", INFO, "no topology given: hosts and subsets were not "
                            "checked against services (pass the topology file too)"))
    return sorted(msgs + analyze(services, rules), key=lambda m: (m.file, m.line, m.code))


def _is_topology(path: str) -> bool:
    """A YAML mapping with hosts: (and no Istio apiVersion/kind) is a topology."""
    try:
        with open(path) as f:
            doc = next(iter(yaml.safe_load_all(f)), None)
    except (OSError, yaml.YAMLError, StopIteration):
        return False
    return isinstance(doc, dict) and "hosts" in doc and "kind" not in doc


def _run_analyze(args: argparse.Namespace) -> int:
    if args.output == "json":
        msgs = analyze_messages(args.files)
        print(json.dumps([message_json(m) for m in msgs], indent=1))
        return int(any(m.level == ERROR for m in msgs))
    lines, code = analyze_paths(args.files)
    for line in lines:
        print(line)
    if not lines:
        print("✔ No validation issues found when analyzing " + ", ".join(args.files))
    return code


# --- apply / registry against a running mesh -----------------------------------------------

def _admin(run: int | None) -> AdminClient:
    from testbed.mesh.deploy.mesh import running_meshes     # late: the deployment loads cryptography
    meshes = running_meshes()
    if run is not None:
        meshes = [m for m in meshes if m["pid"] == run]
    if not meshes:
        print("minimesh: no running mesh" + (f" with runner pid {run}" if run else "")
              + "; start one with: sudo minimesh up TOPOLOGY.yaml (a topology with a mesh: "
                "section)", file=sys.stderr)
        raise SystemExit(EXIT_FAIL)
    if len(meshes) > 1:
        print("minimesh: several meshes are running; choose one with --run PID: "
              + ", ".join(f"{m['pid']} ({m['topology']})" for m in meshes), file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if not os.access(meshes[0]["socket"], os.W_OK):
        print(f"minimesh: cannot use Pilot's admin socket {meshes[0]['socket']}; run with sudo",
              file=sys.stderr)
        raise SystemExit(EXIT_FAIL)
    return AdminClient(meshes[0]["socket"])


def _up_run(run: int | None) -> int | None:
    """The ``minimesh up`` (with a mesh) that ``--run`` names, or the only one; None: use
    Pilot's admin socket (a mesh an experiment runs, or none: _admin says so)."""
    from testbed.cli.control import ControlError, running_ups
    try:
        ups = [r for r in running_ups() if r.mesh and (run is None or r.pid == run)]
    except ControlError:
        return None
    return ups[0].pid if len(ups) == 1 else None


def _run_apply(args: argparse.Namespace) -> int:
    for p in args.file:
        if not Path(p).is_file():
            print(f"minimesh apply: {p}: no such file", file=sys.stderr)
            return EXIT_USAGE
    run = _up_run(args.run)
    if run is not None:      # the running `up`'s own apply: the same path as typing it there
        from testbed.cli.control import remote_command
        return remote_command("apply", [str(Path(p).resolve()) for p in args.file] + ["--run", str(run)])
    lines, code = _admin(args.run).apply_files(args.file)
    for line in lines:
        print(line, file=sys.stderr if code else sys.stdout)
    return code


def format_registry(body: dict) -> str:
    """The /registry answer as a table (service, version, instance, host, address, lease)."""
    if "error" in body:
        return f"registry unreachable: {body['error']}\n"
    rows = [("SERVICE", "VERSION", "INSTANCE", "HOST", "ADDRESS", "LEASE")]
    for svc in sorted(body["services"]):
        for e in sorted(body["services"][svc], key=lambda e: (e["version"], e["instance"])):
            rows.append((svc, e["version"], e["instance"], e["host"], f"{e['ip']}:{e['port']}",
                         f"{e['lease']:x}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    d = body.get("discovery", {})
    out.append(f"{len(rows) - 1} endpoint(s) at etcd revision {body['revision']}; Pilot's watch: "
               + ("healthy" if d.get("healthy") else f"UNHEALTHY ({d.get('last_error')})"))
    for key in body.get("invalid", []):
        out.append(f"invalid registration (never routed to): {key}")
    return "\n".join(out) + "\n"


def _run_registry(args: argparse.Namespace) -> int:
    try:
        status, body = _admin(args.run).request("GET", "/registry")
    except AdminUnavailable as e:
        print(f"minimesh registry: cannot reach Pilot: {e}", file=sys.stderr)
        return EXIT_FAIL
    as_json = args.output == "json"
    print(json.dumps(body, indent=1) if as_json else format_registry(body), end="\n" if as_json else "")
    return EXIT_OK if status == 200 else EXIT_FAIL


def _configure_apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", action="append", required=True, metavar="FILE",
                   help="Istio YAML (VirtualService, DestinationRule); repeat for several, "
                        "applied all or nothing")
    p.add_argument("--run", type=int, default=None, metavar="PID",
                   help="the `minimesh up` process to talk to (when several run)")


def _configure_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="topology and/or Istio rule files")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="json: a list of {code, level, message, origin, reference}, as istioctl analyze -o json")


def _configure_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("list",), default="list")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table",
                   help="json: the listing as Pilot's admin API gives it")
    p.add_argument("--json", action="store_const", dest="output", const="json", help="same as -o json")
    p.add_argument("--run", type=int, default=None, metavar="PID")


SUBCOMMANDS = [
    Subcommand("apply", "apply Istio rules to the running mesh (all or nothing; exit 1 if rejected)",
               _configure_apply, _run_apply),
    Subcommand("analyze", "validate topologies and Istio rules together (Galley); exit 1 on errors",
               _configure_analyze, _run_analyze),
    Subcommand("registry", "list the running mesh's services and endpoints (from etcd)",
               _configure_registry, _run_registry),
]


# --- inside `minimesh up` ------------------------------------------------------------------

def default_sidecar() -> str:
    """minimesh-proxy, unless MINIMESH_SIDECAR=envoy says otherwise."""
    kind = os.environ.get("MINIMESH_SIDECAR", "minimesh")
    return kind if kind in ("minimesh", "envoy") else "minimesh"


@contextlib.contextmanager
def mesh_session(tb: RunningTestbed, history: Any = None, clock: Any = None) -> Iterator[Any]:
    """Start the topology's mesh (if it has a mesh: section) for the CLI's lifetime;
    yields the Mesh, or None. A mesh that cannot start ends ``up`` with status 1. With a
    ``history`` (on ``clock``), the mesh's logs (pushes, ACKs, ejections) go into it at the
    end, before the mesh stops."""
    spec = (getattr(getattr(tb, "topology", None), "sections", None) or {}).get("mesh")
    if spec is None:
        yield None
        return
    # late: Mininet, and the deployment's cryptography, only when the topology has a mesh
    from mininet.log import error
    from testbed.mesh.deploy.mesh import Mesh, MeshError
    t0 = time.monotonic()
    mesh = Mesh(tb, spec, sidecar_default=default_sidecar())
    try:
        mesh.start()
    except MeshError as e:
        error(f"*** mesh: {e}\n")
        raise SystemExit(EXIT_FAIL) from None
    print(f"*** mesh: {len(spec.instances)} instances, etcd on {', '.join(spec.registry.members)}, "
         f"Pilot at {mesh.pilot_url}; ready in {time.monotonic() - t0:.1f} s "
         f"(events: {mesh.events})", file=sys.stderr, flush=True)
    try:
        yield mesh
    finally:
        try:
            if history is not None and clock is not None:
                assert mesh.run_dir is not None                # set by mesh.start()
                from testbed.run.outlier_events import import_mesh_logs  # late: light start-up
                import_mesh_logs(history, clock.wall0, mesh.run_dir / "logs", mesh.events, mesh.spec)
        finally:
            mesh.stop()


def cli_apply(mesh: Any, line: str) -> str:
    """The Mininet CLI's ``apply FILE...``; raises CLIUsageError on usage or rejection."""
    from testbed.mesh.deploy.mesh import ApplyError     # late: the deployment loads cryptography
    if mesh is None:
        raise CLIUsageError("apply: this topology has no mesh: section")
    paths = line.split()
    if not paths:
        raise CLIUsageError("usage: apply FILE...  (Istio YAML, applied all or nothing)")
    for p in paths:
        if not Path(p).is_file():
            raise CLIUsageError(f"apply: {p}: no such file")
    try:
        warnings = mesh.apply_files(paths)
    except ApplyError as e:
        raise CLIUsageError("\n".join(e.errors + ["rejected: nothing was changed"])) from None
    except AdminUnavailable as e:
        raise CLIUsageError(f"apply: cannot reach Pilot: {e}") from None
    return "".join(w + "\n" for w in warnings) + f"applied {len(paths)} file(s): config version " \
        f"{mesh.status()['generation']}\n"


def cli_registry(mesh: Any, line: str) -> str:
    """The Mininet CLI's ``registry [list]``; raises CLIUsageError on usage or an unreachable Pilot."""
    if mesh is None:
        raise CLIUsageError("registry: this topology has no mesh: section")
    words = line.split()
    if words[:1] == ["list"]:
        words = words[1:]
    if words not in ([], ["-o", "json"], ["-o", "table"], ["-ojson"], ["--json"]):
        raise CLIUsageError("usage: registry [list] [-o json]")
    try:
        _, body = mesh.admin.request("GET", "/registry")
    except AdminUnavailable as e:
        raise CLIUsageError(f"registry: cannot reach Pilot: {e}") from None
    return json.dumps(body, indent=1) + "\n" if "json" in " ".join(words) else format_registry(body)


# --- delete -f / get, as kubectl has them -------------------------------------------------

# kubectl's names for the kinds minimesh takes: singular, plural, short -> (Kind, API group)
KINDS = {"virtualservice": ("VirtualService", "networking.istio.io"),
         "destinationrule": ("DestinationRule", "networking.istio.io"),
         "peerauthentication": ("PeerAuthentication", "security.istio.io"),
         "authorizationpolicy": ("AuthorizationPolicy", "security.istio.io")}
KIND_ALIASES = {**{k: k for k in KINDS}, **{k + "s": k for k in KINDS}, "authorizationpolicies": "authorizationpolicy",
                "vs": "virtualservice", "dr": "destinationrule", "pa": "peerauthentication",
                "ap": "authorizationpolicy"}
GET_USAGE = ("usage: get virtualservice|destinationrule|peerauthentication|authorizationpolicy [NAME] "
             "[-o yaml|json] [-A]")


def cli_delete(mesh: Any, line: str) -> str:
    """The shell's ``delete -f FILE...`` (kubectl delete -f): removes what the files name;
    a name that was not applied is a NotFound error, the others are still deleted."""
    from testbed.mesh.deploy.mesh import ApplyError     # late: the deployment loads cryptography
    if mesh is None:
        raise CLIUsageError("delete: this topology has no mesh: section")
    words = line.split()
    paths = [w for w in words if w not in ("-f", "--filename")]
    if not paths or words[0] not in ("-f", "--filename"):
        raise CLIUsageError("usage: delete -f FILE...  (removes the resources the files name)")
    for p in paths:
        if not Path(p).is_file():
            raise CLIUsageError(f"delete: {p}: no such file")
    try:
        deleted, missing = mesh.delete_files(paths)
    except ApplyError as e:
        raise CLIUsageError("\n".join(e.errors + ["rejected: nothing was deleted"])) from None
    except AdminUnavailable as e:
        raise CLIUsageError(f"delete: cannot reach Pilot: {e}") from None
    out = "".join(f"{k.split('/')[0].lower()}.{_group(k)} \"{k.split('/', 1)[1]}\" deleted\n" for k in deleted)
    if missing:
        raise CLIUsageError(out + "\n".join(f"Error from server (NotFound): {m}" for m in missing))
    return out


def _group(kind_name: str) -> str:
    kind = kind_name.split("/")[0]
    return next((g for k, g in KINDS.values() if k == kind), "istio.io")


def _age(s: float) -> str:
    """kubectl's AGE column: 45s, 3m5s, 42m, 5h."""
    s = int(s)
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 60}m" if s < 3 * 3600 else f"{s // 3600}h"


def _row(kind: str, r: dict) -> list[str]:
    spec = (r.get("manifest") or {}).get("spec") or {}
    if kind == "VirtualService":
        return [json.dumps(spec.get("gateways") or []) if spec.get("gateways") else "",
                json.dumps(spec.get("hosts") or [])]
    if kind == "DestinationRule":
        return [str(spec.get("host", ""))]
    if kind == "PeerAuthentication":
        return [str((spec.get("mtls") or {}).get("mode", ""))]
    return [str(spec.get("action", "ALLOW"))]


def format_get(rules: list[dict], what: str, name: str | None, output: str | None,
               all_namespaces: bool) -> str:
    """``get`` as kubectl prints it (a table, or -o yaml / -o json of the applied documents)."""
    kind, group = KINDS[what]
    picked = sorted((r for r in rules if r["kind"] == kind and (all_namespaces or r["namespace"] == "default")
                     and (name is None or r["name"] == name)), key=lambda r: (r["namespace"], r["name"]))
    if name is not None and not picked:
        raise CLIUsageError(f"Error from server (NotFound): {what}s.{group} \"{name}\" not found")
    # the documents as applied (a rule Pilot got as a value, not as YAML, shows its identity)
    docs = [dict(r["manifest"] or {"apiVersion": f"{group}/v1", "kind": kind},
                 metadata={**((r["manifest"] or {}).get("metadata") or {"name": r["name"]}),
                           "namespace": r["namespace"]}) for r in picked]
    if output in ("yaml", "json"):
        body: Any = docs[0] if name is not None else {"apiVersion": "v1", "items": docs, "kind": "List",
                                                      "metadata": {"resourceVersion": ""}}
        return json.dumps(body, indent=4) + "\n" if output == "json" else \
            yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    if not picked:
        return "No resources found" + ("" if all_namespaces else " in default namespace") + ".\n"
    head = {"VirtualService": ["GATEWAYS", "HOSTS"], "DestinationRule": ["HOST"],
            "PeerAuthentication": ["MODE"], "AuthorizationPolicy": ["ACTION"]}[kind]
    rows = [(["NAMESPACE"] if all_namespaces else []) + ["NAME"] + head + ["AGE"]]
    rows += [([r["namespace"]] if all_namespaces else []) + [r["name"]] + _row(kind, r) + [_age(r["age_s"])]
             for r in picked]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def parse_get(line: str) -> tuple[str, str | None, str | None, bool]:
    """'virtualservice reviews -o yaml' -> (kind key, name or None, output or None, -A)."""
    words = line.split()
    output, all_ns, rest = None, False, []
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-o", "--output") and i + 1 < len(words):
            output, i = words[i + 1], i + 2
            continue
        if w.startswith("-o") and len(w) > 2 or w.startswith("--output="):
            output = w.split("=", 1)[1] if "=" in w else w[2:]
        elif w in ("-A", "--all-namespaces"):
            all_ns = True
        else:
            rest.append(w)
        i += 1
    if not rest or len(rest) > 2 or output not in (None, "yaml", "json", "wide"):
        raise CLIUsageError(GET_USAGE)
    what = KIND_ALIASES.get(rest[0].lower().split(".")[0])
    if what is None:
        raise CLIUsageError(f"error: the server doesn't have a resource type \"{rest[0]}\"; {GET_USAGE}")
    return what, (rest[1] if len(rest) == 2 else None), (None if output == "wide" else output), all_ns


def cli_get(mesh: Any, line: str) -> str:
    """The shell's ``get KIND [NAME] [-o yaml|json] [-A]``: the rules applied to the mesh."""
    if mesh is None:
        raise CLIUsageError("get: this topology has no mesh: section")
    what, name, output, all_ns = parse_get(line)
    try:
        rules = mesh.rules()
    except AdminUnavailable as e:
        raise CLIUsageError(f"get: cannot reach Pilot: {e}") from None
    return format_get(rules, what, name, output, all_ns)


register_mesh_session(mesh_session)
register_command(ShellCommand("apply", "Apply Istio rules to the mesh (all or nothing). Usage: apply FILE...",
                              cli_apply))
register_command(ShellCommand("registry", "List the mesh's services and endpoints from etcd. "
                              "Usage: registry [list] [-o json]", cli_registry))
register_command(ShellCommand("delete", "Remove the Istio rules a file names (kubectl delete -f). "
                              "Usage: delete -f FILE...", cli_delete))
register_command(ShellCommand("get", "Show applied Istio rules (kubectl get). " + GET_USAGE[0].upper() + GET_USAGE[1:],
                              cli_get))
