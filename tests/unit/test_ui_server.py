"""testbed.ui.server: who may drive the live page (Host, Origin, token, JSON), the SSE
stream, and how a page action becomes one shell line (no network namespaces needed)."""
from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from testbed.ui.live import action_line
from testbed.ui.server import UIServer, parse_listen


class FakeCollector:
    def __init__(self):
        self.ticks = 0

    def tick(self):
        self.ticks += 1
        return {"t": float(self.ticks), "n": self.ticks}

    def state(self, max_age_s: float = 1.0):
        return {"t": 0.0, "n": self.ticks}

    def unsubscribe(self):
        pass


@pytest.fixture
def server():
    calls = []

    def run(command, args, text):
        calls.append((command, args, text))
        return (args != "bad"), ("done\n" if args != "bad" else "*** no node 'bad'\n")
    s = UIServer(FakeCollector(), run, "127.0.0.1", 0, interval_s=0.05).start()
    s.calls = calls
    try:
        yield s
    finally:
        s.stop()


def request(s, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def act(s, body, **headers):
    base = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{s.port}", "X-Minimesh-Token": s.token}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    status, data = request(s, "POST", "/api/action", body, {k: v for k, v in base.items() if v is not None})
    return status, json.loads(data)


def test_page_and_assets_are_served_and_the_token_is_not_in_them(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and b"/static/ui.js" in page and server.token.encode() not in page
    assert request(server, "GET", "/static/ui.js")[0] == 200
    assert request(server, "GET", "/static/../../etc/passwd")[0] == 404
    assert server.page_url.endswith(f"#token={server.token}")


def test_an_action_runs_with_token_origin_and_json(server):
    assert act(server, {"command": "link-set", "args": "h1 s1 delay=5ms"}) == (200, {"ok": True, "output": "done\n"})
    assert server.calls == [("link-set", "h1 s1 delay=5ms", "")]
    assert act(server, {"command": "link-set", "args": "bad"}) == (200, {"ok": False, "output": "*** no node 'bad'\n"})


@pytest.mark.parametrize("headers", [
    {"X_Minimesh_Token": "wrong"}, {"X_Minimesh_Token": None},
    {"Origin": "http://evil.example"}, {"Origin": None},
    {"Content_Type": "text/plain"},
    {"Host": "evil.example:80"},
])
def test_refused_without_token_own_origin_json_or_own_host(server, headers):
    status, body = act(server, {"command": "heal", "args": ""}, **headers)
    assert status == 403 and body["ok"] is False
    assert server.calls == []


def test_only_the_shell_fault_commands(server):
    status, body = act(server, {"command": "sh", "args": "rm -rf /"})
    assert status == 400 and "not an action" in body["output"] and server.calls == []


def test_the_event_stream_sends_states(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    c.request("GET", "/events")
    r = c.getresponse()
    assert r.getheader("Content-Type").startswith("text/event-stream")
    seen = []
    while len(seen) < 2:
        line = r.fp.readline().decode()
        if line.startswith("data: "):
            seen.append(json.loads(line[6:]))
    c.close()
    assert seen[1]["n"] > seen[0]["n"]


def test_no_page_open_no_ticks():
    col = FakeCollector()
    s = UIServer(col, None, "127.0.0.1", 0, interval_s=0.01).start()
    try:
        import time
        time.sleep(0.2)
        assert col.ticks == 0
    finally:
        s.stop()


def test_action_line():
    assert action_line("link-set", "h1 s1 delay=5ms", None) == "link-set h1 s1 delay=5ms"
    assert action_line("heal", "", None) == "heal"
    assert action_line("apply", "ignored", Path("/run/x.yaml")) == "apply /run/x.yaml"
    with pytest.raises(ValueError, match="one line"):
        action_line("link-set", "h1 s1 delay=5ms\nsh rm", None)


def test_parse_listen():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:9") == ("0.0.0.0", 9)
    with pytest.raises(ValueError, match="PORT"):
        parse_listen("127.0.0.1:http")


@pytest.mark.parametrize("value", ["127.0.0.1:http", "127.0.0.1:99999"])
def test_up_refuses_a_bad_ui_address_before_building(value):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "testbed", "up", "linear,2", "--ui", value],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and f"--ui {value}: PORT" in r.stderr, r.stderr


def test_host_check():
    lo = UIServer(FakeCollector(), None, "127.0.0.1", 8080)
    assert lo.host_ok("127.0.0.1:8080") and lo.host_ok("localhost:8080") and lo.host_ok("[::1]:8080")
    assert not lo.host_ok("127.0.0.1:8081") and not lo.host_ok("evil.example:8080") and not lo.host_ok("127.0.0.1")
    any_ = UIServer(FakeCollector(), None, "0.0.0.0", 8080)
    assert any_.host_ok("192.0.2.7:8080") and any_.host_ok("[2001:db8::1]:8080")
    assert not any_.host_ok("rebind.evil.example:8080")
