"""The web stand-in's --fail-every: every N-th new request fails once; its retries (same
x-request-id) are answered 200 whatever other requests come in between."""
from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator

import pytest

from testbed.apps.website import make_server


@pytest.fixture
def flaky() -> Iterator[tuple[int, io.StringIO]]:
    log = io.StringIO()
    server = make_server("127.0.0.1", 0, "example.org", log, fail_every=3)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1], log
    server.shutdown()
    server.server_close()


def get(port: int, rid: str | None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/", headers={"x-request-id": rid} if rid else {})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def test_every_third_request_fails_without_ids(flaky):
    port, log = flaky
    assert [get(port, None) for _ in range(6)] == [200, 200, 503, 200, 200, 503]
    recs = [json.loads(ln) for ln in log.getvalue().splitlines()]
    assert [r["status"] for r in recs] == [200, 200, 503, 200, 200, 503]
    assert all(r["attempt"] == 1 for r in recs)


def test_a_retry_succeeds_whatever_comes_between(flaky):
    port, log = flaky
    assert get(port, "a") == 200 and get(port, "b") == 200
    assert get(port, "c") == 503                    # the 3rd new request
    assert get(port, "d") == 200 and get(port, "e") == 200
    assert get(port, "c") == 200                    # c's retry: not counted, not failed
    assert get(port, "f") == 503                    # the 6th new request, with c's retry between
    assert get(port, "f") == 200 and get(port, "f") == 200
    recs = [json.loads(ln) for ln in log.getvalue().splitlines()]
    assert [(r["headers"]["x-request-id"], r["attempt"], r["status"]) for r in recs][-4:] == [
        ("c", 2, 200), ("f", 1, 503), ("f", 2, 200), ("f", 3, 200)]
