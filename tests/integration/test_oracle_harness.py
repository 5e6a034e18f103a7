"""The harness pieces themselves, on loopback, no root: the echo app as a command (the
mesh's builtin:echo), the in-process Upstreams, config templates, the website stand-in,
and the testbed DNS record checks."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest

from testbed.apps.echo import Behaviour, Identity
from testbed.net.dns import DnsError, dnsmasq_argv, render_records
from tests.support.configs import CONFIG_DIR, placeholders, render
from tests.support.ports import free_port
from tests.support.procs import REPO
from tests.support.upstream import Upstreams


def _get(port: int, path: str = "/", headers: dict | None = None, method: str = "GET",
         body: bytes | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _wait(port: int, proc: subprocess.Popen) -> None:
    for _ in range(200):
        assert proc.poll() is None, proc.communicate()
        try:
            _get(port, "/")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not come up")


def test_echo_command_answers_identity_and_headers():
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "testbed.apps.echo", "--port", str(port), "--bind",
                          "127.0.0.1", "--service", "reviews", "--version", "v2", "--instance", "r2",
                          "--fail-first", "2", "--fail-status", "502"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(port, p)  # first request: fails (502), consumed by the wait
        status, hdrs, body = _get(port, "/a/b?x=1", {"Host": "svc.test", "X-Thing": "1"}, "POST", b"abc")
        assert status == 502
        status, hdrs, body = _get(port, "/a/b?x=1", {"Host": "svc.test", "X-Thing": "1"}, "POST", b"abc")
        rec = json.loads(body)
        assert status == 200 and hdrs["x-echo-instance"] == "r2"
        assert (rec["service"], rec["version"], rec["instance"]) == ("reviews", "v2", "r2")
        assert (rec["authority"], rec["method"], rec["path"], rec["body_bytes"]) == ("svc.test", "POST", "/a/b?x=1", 3)
        assert rec["headers"]["x-thing"] == "1"
    finally:
        p.terminate()
        p.wait(5)


def test_upstreams_record_every_arrival_and_delay():
    with Upstreams({"a": Identity("a", "v1", "a-0"),
                    "s": (Identity("s", "v1", "s-0"), Behaviour(delay_ms=200))}) as ups:
        assert _get(ups.port("a"), "/x")[0] == 200
        t0 = time.monotonic()
        assert _get(ups.port("s"), "/y")[0] == 200
        assert time.monotonic() - t0 >= 0.19
        assert [r["path"] for r in ups.records("a")] == ["/x"] and ups.total() == 2


def test_config_templates_fill_only_placeholders():
    names = placeholders((CONFIG_DIR / "routing.yaml").read_text())
    text = render("routing.yaml", {n: 1000 + i for i, n in enumerate(names)})
    assert "${" not in text and "^/api/v[0-9]+/items$" in text
    with pytest.raises(KeyError, match="UPSTREAM_A_PORT"):
        render("minimal.yaml", {"LISTEN_PORT": 1, "ADMIN_PORT": 2})


def test_website_page_and_log(tmp_path):
    port = free_port()
    log = tmp_path / "web.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "testbed.apps.website", "--bind", "127.0.0.1", "--port",
                          str(port), "--site", "example.org", "--log", str(log)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(port, p)
        status, _, body = _get(port, "/page", {"Host": "example.org"})
        assert status == 200 and b"minimesh stand-in for example.org" in body and b"<b>example.org</b>" in body
    finally:
        p.terminate()
        p.wait(5)
    assert p.returncode == 0
    last = json.loads(log.read_text().splitlines()[-1])
    assert (last["peer"], last["path"], last["host"]) == ("127.0.0.1", "/page", "example.org")


def test_dns_records_are_checked():
    assert render_records({"b.example": "10.0.0.2", "a.example": "10.0.0.1"}) == \
        "10.0.0.1\ta.example\n10.0.0.2\tb.example\n"
    with pytest.raises(DnsError, match="not an IPv4 address"):
        render_records({"a.example": "10.0.0.300"})
    with pytest.raises(DnsError, match="not a valid host name"):
        render_records({"bad name": "10.0.0.1"})
    argv = dnsmasq_argv("10.0.0.53", REPO / "x.hosts", REPO / "x.pid")
    assert "--no-resolv" in argv and "--listen-address=10.0.0.53" in argv and "--bind-interfaces" in argv
