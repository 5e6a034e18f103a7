"""The pure parts of experiments/lablib/front_proxy.py (no root, no network): curl's status line,
the stand-in's request log, dnsmasq's query log, the proxy command lines."""
from __future__ import annotations

import json

import pytest

from lablib.front_proxy import (CURL, ENVOY_V3_YAML, SEED_YAML, curl_status, dns_queries, proxy_argv,
                                     read_web_log)

CURL_V = """*   Trying 10.0.0.1:15001...
* Connected to 10.0.0.1 (10.0.0.1) port 15001 (#0)
> GET / HTTP/1.1
> Host: google.com
>
< HTTP/1.1 200 OK
< server: envoy
<
<!doctype html><p>HTTP/1.1 500 in a page is not a status line</p>
"""


def test_curl_status_reads_the_response_line_not_the_body():
    assert curl_status(CURL_V) == 200
    assert curl_status(CURL_V.replace("< HTTP/1.1 200 OK", "< HTTP/1.1 503 Service Unavailable")) == 503
    assert curl_status("curl: (7) Failed to connect to 10.0.0.1 port 15001: Connection refused") is None
    assert curl_status("< HTTP/1.1 301 Moved\n...\n< HTTP/2 200\n") == 200, "the last response counts (-L)"


def test_the_tutorial_command_is_unchanged():
    assert " ".join(CURL) == "curl -v -H Host: google.com 10.0.0.1:15001/"


def test_read_web_log(tmp_path):
    assert read_web_log(tmp_path / "none.jsonl") == []
    recs = [{"peer": "10.0.0.1", "method": "GET", "path": "/", "host": "gwadvnet20.github.io", "headers": {}}] * 2
    (tmp_path / "web.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")
    assert read_web_log(tmp_path / "web.jsonl") == recs


def test_dns_queries_counts_one_client_and_name():
    log = ("dnsmasq: query[A] gwadvnet20.github.io from 10.0.0.1\n"
           "dnsmasq: /tmp/x/dns-dns.hosts gwadvnet20.github.io is 10.0.0.80\n"
           "dnsmasq: query[AAAA] gwadvnet20.github.io from 10.0.0.1\n"
           "dnsmasq: query[A] gwadvnet20.github.io from 10.0.0.2\n"
           "dnsmasq: query[A] gwadvnet20.github.io from 10.0.0.1\n")
    assert dns_queries(log, "gwadvnet20.github.io", "10.0.0.1") == 2
    assert dns_queries(log, "example.org", "10.0.0.1") == 0


def test_proxy_argv(monkeypatch):
    mm = proxy_argv("minimesh", "/py")
    assert mm == ["/py", "-m", "proxy", "--config-path", str(SEED_YAML)]
    monkeypatch.setenv("MINIMESH_ENVOY", "/opt/envoy")
    ev = proxy_argv("envoy")
    assert ev[0] == "/opt/envoy" and ev[ev.index("--config-path") + 1] == str(ENVOY_V3_YAML)
    assert "--disable-hot-restart" in ev
    with pytest.raises(ValueError, match="allowed minimesh, envoy"):
        proxy_argv("nginx")
