"""The topology's mesh: section (testbed.mesh.spec): placement, validation with file:line,
app command lines; the mesh CLI's pure parts (analyze, registry table). No root needed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import testbed.mesh.spec as spec_mod
from testbed.cli.mesh import analyze_paths, format_registry
from testbed.mesh.spec import InstanceSpec, MeshSpec, app_argv
from testbed.topology.load import load_topology, parse_topology
from testbed.topology.spec import TopologyError

REPO = Path(__file__).resolve().parents[2]

HOSTS = """\
name: t
hosts:
  c0: {}
  h1: {}
  h2: {}
  h3: {}
  e1: {}
  cp: {}
switches: {s1: {}}
links: [{between: [c0, s1]}, {between: [h1, s1]}, {between: [h2, s1]}, {between: [h3, s1]},
        {between: [e1, s1]}, {between: [cp, s1]}]
"""


def mesh(body: str) -> MeshSpec:
    return parse_topology(HOSTS + body, "m.yaml").sections["mesh"]


def error_of(body: str) -> TopologyError:
    with pytest.raises(TopologyError) as e:
        mesh(body)
    return e.value


BASE = """\
mesh:
  registry: {members: [e1]}
  control_plane: {host: cp}
  clients: [c0]
  services:
    echo:
      port: 8080
      run: builtin:echo
      versions:
        v1: {replicas: 2}
        v2: {replicas: 1, hosts: [h3]}
"""


def test_placement_round_robin_skips_registry_cp_and_clients_and_placed_hosts_first():
    m = mesh(BASE)
    got = [(i.instance, i.host, i.ip, i.app_port, i.slot) for i in m.instances]
    # v2 claims h3 first; v1 replicas go round-robin over h1, h2, h3 (c0 is a client)
    assert got == [("echo-v1-0", "h1", "10.0.0.2", 20000, 0), ("echo-v1-1", "h2", "10.0.0.3", 20000, 0),
                   ("echo-v2-0", "h3", "10.0.0.4", 20000, 0)]
    assert m.mesh_hosts == ("h1", "h2", "h3", "c0")
    assert m.client_sidecar_hosts == ("c0",)
    assert m.vips == (("echo", "10.96.0.1"),)
    assert m.registry.members == ("e1",) and m.control_plane == "cp"
    svc = m.service_specs()[0]
    assert (svc.name, svc.port, svc.version_names) == ("echo", 8080, ("v1", "v2"))


def test_round_robin_skips_hosts_whose_port_is_taken_and_slots_count_per_host():
    m = mesh("""\
mesh:
  registry: {members: [e1]}
  control_plane: {host: cp}
  services:
    a: {port: 80, run: builtin:echo, versions: {v1: {replicas: 4}}}
    b: {port: 81, run: builtin:echo}
""")
    hosts = {i.instance: (i.host, i.slot) for i in m.instances}
    assert hosts == {"a-v1-0": ("c0", 0), "a-v1-1": ("h1", 0), "a-v1-2": ("h2", 0),
                     "a-v1-3": ("h3", 0), "b-v1-0": ("c0", 1)}
    second = next(i for i in m.instances if i.slot == 1)
    assert (second.app_port, second.admin_port, second.outbound_port) == (20001, 15100, 15101)


@pytest.mark.parametrize("body, line, words", [
    (BASE.replace("hosts: [h3]", "hosts: [h9]"), 11, "unknown host 'h9'"),
    (BASE.replace("replicas: 2", "replicas: 0"), 10, "must be >= 1"),
    (BASE.replace("run: builtin:echo", "run: builtin:nope"), 8, "unknown built-in app 'nope'"),
    (BASE.replace("      run: builtin:echo\n", "      run: builtin:echo\n      sidecar: linkerd\n"),
     9, "unknown sidecar 'linkerd'; allowed: minimesh, envoy"),
    (BASE.replace("members: [e1]", "members: [e1, e1]"), 2, "listed twice"),
    (BASE.replace("control_plane: {host: cp}", "control_plane: {host: zz}"), 3, "unknown host 'zz'"),
    (BASE.replace("clients: [c0]", "clients: [c9]"), 4, "unknown host 'c9'"),
    (BASE.replace("port: 8080", "port: 15001"), 7, "15001 is not usable"),
    (BASE.replace("port: 8080", "prot: 8080"), 7, "unknown field 'prot'"),
    (BASE.replace("registry: {members: [e1]}", "registry: {members: [e1], heartbeat_ms: 500}"),
     2, "5 x heartbeat_ms"),
    (BASE.replace("registry: {members: [e1]}", "registry: {members: [e1], ttl_s: 1}"),
     2, "ttl_s: 1 s must be at least 2 x election_ms"),
    (BASE + "  rules: [missing.yaml]\n", 12, "no such file"),
    (BASE.replace("run: builtin:echo", "run: 'app --port {prot}'"), 8, "placeholders"),
])
def test_errors_name_file_line_and_allowed_values(body, line, words):
    e = error_of(body)
    assert (e.file, e.line) == ("m.yaml", len(HOSTS.splitlines()) + line), str(e)
    assert words in e.message, str(e)


@pytest.mark.parametrize("unlinked, line, where", [
    ("cp", 3, "mesh.control_plane.host"), ("e1", 2, "mesh.registry.members[0]"),
    ("c0", 4, "mesh.clients[0]"), ("h3", 11, "mesh.services.echo.versions.v2.hosts[0]"),
])
def test_a_mesh_host_without_a_link_is_a_file_line_error(unlinked, line, where):
    """Issue 14, point 6: was AttributeError: 'NoneType' object has no attribute 'IP'."""
    text = HOSTS.replace(f"{{between: [{unlinked}, s1]}}, ", "").replace(f", {{between: [{unlinked}, s1]}}", "")
    assert f"[{unlinked}, s1]" not in text
    with pytest.raises(TopologyError) as e:
        parse_topology(text + BASE, "m.yaml")
    assert e.value.line == len(text.splitlines()) + line, str(e.value)
    assert e.value.message.startswith(f"{where}: host {unlinked!r} has no link"), str(e.value)


def test_unlinked_hosts_get_no_replicas():
    text = HOSTS.replace("{between: [h1, s1]}, ", "")
    m = parse_topology(text + BASE.replace("replicas: 2", "replicas: 1"), "m.yaml").sections["mesh"]
    assert "h1" not in {i.host for i in m.instances} and len(m.instances) == 2


@pytest.mark.parametrize("field, body", [
    ("mesh.control_plane.host", BASE.replace("control_plane: {host: cp}", "control_plane: {host: s1}")),
    ("mesh.registry.members[0]", BASE.replace("members: [e1]", "members: [s1]")),
    ("mesh.clients[0]", BASE.replace("clients: [c0]", "clients: [s1]")),
])
def test_a_switch_where_a_host_belongs_is_called_a_switch(field, body):
    e = error_of(body)
    assert e.message.startswith(f"{field}: 's1' is a switch; this needs a host"), str(e)


def test_port_clash_on_one_host_is_an_error():
    e = error_of(BASE.replace("v1: {replicas: 2}", "v1: {replicas: 2, hosts: [h3]}"))
    assert "port clash on host h3" in e.message and "8080" in e.message
    assert e.line == len(HOSTS.splitlines()) + 10
    e = error_of(BASE.replace("v1: {replicas: 2}", "v1: {replicas: 4}"))
    assert "port clash" in e.message and "every eligible host" in e.message


def test_no_host_left_for_automatic_placement():
    e = error_of(BASE.replace("members: [e1]", "members: [e1, h1, h2, h3]"))
    assert "no host to place replicas on" in e.message


def test_vip_range_clash_with_host_addresses():
    with pytest.raises(TopologyError, match="inside the service VIP range"):
        parse_topology("hosts:\n  a: {ip: 10.96.0.1/16}\n  b: {}\nlinks: [{between: [a, b]}]\n"
                       "mesh:\n  registry: {members: [a]}\n"
                       "  control_plane: {host: a}\n  services: {s: {port: 80, run: x}}\n", "v.yaml")


def test_app_argv_builtin_and_template():
    inst = InstanceSpec("reviews", "v2", "reviews-v2-0", "h1", "10.0.0.2", 9080, 20003, 3,
                        "builtin:reviews", None)
    assert app_argv("builtin:reviews", inst, "PY") == [
        "PY", "-m", "testbed.apps.bookinfo", "--app", "reviews", "--bind", "127.0.0.1",
        "--port", "20003", "--service", "reviews", "--version", "v2", "--instance", "reviews-v2-0",
        "--node", "h1"]
    assert app_argv("builtin:echo", inst, "PY")[:3] == ["PY", "-m", "testbed.apps.echo"]
    assert app_argv("python3 app.py --port {port} --name '{service} {version}' {instance}", inst) == [
        "python3", "app.py", "--port", "20003", "--name", "reviews v2", "reviews-v2-0"]


def test_shipped_topologies_parse_and_analyze_clean():
    bk = load_topology(REPO / "topologies/bookinfo.yaml").sections["mesh"]
    assert {(i.service, i.version) for i in bk.instances} == {
        ("productpage", "v1"), ("details", "v1"), ("reviews", "v1"), ("reviews", "v2"),
        ("reviews", "v3"), ("ratings", "v1")}
    assert bk.rules and all(Path(r).is_file() for r in bk.rules)
    for files in (["topologies/bookinfo.yaml", "topologies/bookinfo/reviews-jason.yaml"],
                  ["topologies/bookinfo.yaml", "topologies/bookinfo/reviews-canary.yaml"],
                  ["topologies/mesh-echo.yaml", "topologies/mesh/echo-90-10.yaml"]):
        lines, code = analyze_paths([str(REPO / f) for f in files])
        assert (lines, code) == ([], 0)


def test_analyze_reports_rule_and_topology_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "topologies/bookinfo/reviews-v3.yaml").read_text().replace("subset: v3", "subset: v9"))
    lines, code = analyze_paths([str(REPO / "topologies/bookinfo.yaml"), str(bad)])
    assert code == 1 and any(ln.startswith("Error [IST0101]") and "v9" in ln and f"{bad}:" in ln
                             for ln in lines), lines
    topo = tmp_path / "t.yaml"
    topo.write_text(HOSTS + BASE.replace("replicas: 2", "replicas: 0"))
    lines, code = analyze_paths([str(topo)])
    assert code == 1 and lines[0].startswith("Error [MM0008]") and f"{topo}:" in lines[0]


def test_registry_table():
    body = {"revision": 7, "discovery": {"healthy": True}, "invalid": ["/minimesh/services/x"],
            "services": {"echo": [{"version": "v2", "instance": "echo-v2-0", "host": "h3", "ip": "10.0.0.4",
                                   "port": 8080, "lease": 255},
                                  {"version": "v1", "instance": "echo-v1-0", "host": "h1", "ip": "10.0.0.2",
                                   "port": 8080, "lease": 16}]}}
    out = format_registry(body).splitlines()
    assert out[0].split() == ["SERVICE", "VERSION", "INSTANCE", "HOST", "ADDRESS", "LEASE"]
    assert out[1].split() == ["echo", "v1", "echo-v1-0", "h1", "10.0.0.2:8080", "10"]
    assert out[2].split() == ["echo", "v2", "echo-v2-0", "h3", "10.0.0.4:8080", "ff"]
    assert "2 endpoint(s) at etcd revision 7" in out[3] and "healthy" in out[3]
    assert "invalid registration" in out[4]


def test_cli_has_mesh_subcommands_and_reports_no_running_mesh(tmp_path, monkeypatch, capsys):
    from testbed.cli.app import main
    monkeypatch.setenv("MINIMESH_STATE_DIR", str(tmp_path))
    assert main(["registry"]) == 1
    assert "no running mesh" in capsys.readouterr().err
    rules = REPO / "topologies/mesh/echo-90-10.yaml"
    assert main(["apply", "-f", str(rules)]) == 1
    assert main(["analyze", str(REPO / "topologies/mesh-echo.yaml"), str(rules)]) == 0
    assert sys.modules["testbed.mesh.spec"] is spec_mod


def test_cli_reports_an_unreachable_pilot(tmp_path, monkeypatch, capsys):
    import json
    import os

    from testbed.cli.app import main
    from testbed.journal import proc_start
    monkeypatch.setenv("MINIMESH_STATE_DIR", str(tmp_path))
    (tmp_path / "mesh").mkdir()
    sock = tmp_path / "gone.sock"
    sock.touch()
    (tmp_path / "mesh" / f"{os.getpid()}.json").write_text(json.dumps(
        {"pid": os.getpid(), "start": proc_start(os.getpid()), "socket": str(sock), "topology": "t"}))
    assert main(["registry"]) == 1
    assert "cannot reach Pilot" in capsys.readouterr().err
    assert main(["apply", "-f", str(REPO / "topologies/mesh/echo-90-10.yaml")]) == 2
    assert "cannot reach Pilot" in capsys.readouterr().err


def test_mesh_names_label_instances_pilot_vips_and_etcd():
    topo = load_topology(Path(__file__).resolve().parents[2] / "topologies" / "mesh-lab.yaml")
    spec = topo.sections["mesh"]
    ips = {f"h{i}": f"10.0.0.{i + 1}" for i in range(1, 5)}
    ips.update(c0="10.0.0.1", e1="10.0.0.6", e2="10.0.0.7", e3="10.0.0.8", cp="10.0.0.9")
    names = spec_mod.mesh_names(spec, ips.__getitem__)
    assert {names[i.ip] for i in spec.instances} == {i.instance for i in spec.instances}
    assert names["10.0.0.9"] == "pilot" and names["10.0.0.6"] == "etcd-e1"
    assert names[str(dict(spec.vips)["echo"])] == "echo-vip"
