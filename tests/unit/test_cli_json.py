"""`-o json` of analyze and registry (link-show, ps and proxy-status are covered with their
commands in test_cli_remote and test_inspection), and `minimesh apply` taking the running
`up`'s own path when there is one."""
from __future__ import annotations

import json
import types

import pytest

import testbed.cli.mesh as climesh
from testbed.cli.app import main
from testbed.cli.control import RunInfo
from testbed.cli.shell_commands import CLIUsageError

BAD_VS = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: x}
spec: {hosts: [nope], http: [{route: [{destination: {host: nope}}]}]}
"""


def test_analyze_json_as_istioctl(tmp_path, capsys):
    f = tmp_path / "vs.yaml"
    f.write_text(BAD_VS)
    assert main(["analyze", "-o", "json", "topologies/bookinfo.yaml", str(f)]) == 1
    msgs = json.loads(capsys.readouterr().out)
    assert {m["code"] for m in msgs} == {"IST0101"}
    assert msgs[0]["level"] == "Error" and msgs[0]["origin"] == "VirtualService x"
    assert msgs[0]["reference"] == f"{f}:4" and msgs[0]["file"] == str(f) and msgs[0]["line"] == 4
    assert main(["analyze", "-o", "json", "topologies/bookinfo.yaml"]) == 0
    assert json.loads(capsys.readouterr().out) == []


REGISTRY = {"revision": 5, "discovery": {"healthy": True}, "invalid": [], "services": {
    "echo": [{"version": "v1", "instance": "echo-v1-0", "host": "h1", "ip": "10.0.0.2", "port": 8080, "lease": 255}]}}


def test_registry_json_in_the_shell():
    mesh = types.SimpleNamespace(admin=types.SimpleNamespace(request=lambda m, u: (200, REGISTRY)))
    assert json.loads(climesh.cli_registry(mesh, "-o json")) == REGISTRY
    assert json.loads(climesh.cli_registry(mesh, "list -o json")) == REGISTRY
    assert "echo-v1-0" in climesh.cli_registry(mesh, "") and "1 endpoint(s) at etcd revision 5" in \
        climesh.cli_registry(mesh, "list")
    with pytest.raises(CLIUsageError, match=r"usage: registry \[list\] \[-o json\]"):
        climesh.cli_registry(mesh, "-o yaml")


def test_registry_json_option_parses():
    """-o json, and the older --json alike."""
    from testbed.cli.app import build_parser
    p = build_parser()
    assert p.parse_args(["registry", "-o", "json"]).output == "json"
    assert p.parse_args(["registry", "--json"]).output == "json"
    assert p.parse_args(["registry"]).output == "table"


def test_apply_goes_through_the_running_up(tmp_path, monkeypatch):
    rules = tmp_path / "r.yaml"
    rules.write_text(BAD_VS)
    sent = []
    run = RunInfo(4242, "t", "/x.sock", 0.0, {}, [], mesh=True)
    monkeypatch.setattr("testbed.cli.control.running_ups", lambda directory=None: [run])
    monkeypatch.setattr("testbed.cli.control.send_line",
                        lambda r, line, client="", timeout_s=None: sent.append((r.pid, line)) or
                        {"stdout": "applied 1 file(s): config version 2\n", "stderr": "", "status": 0})
    monkeypatch.chdir(tmp_path)
    assert main(["apply", "-f", "r.yaml"]) == 0
    assert sent == [(4242, f"apply {rules}")]          # the path made absolute: the up runs elsewhere
