"""Identity faults as fault-model values, against a real Citadel on loopback."""
from __future__ import annotations

import asyncio
import threading

import pytest

from testbed.faults.base import FaultError, fault_from_dict
from testbed.mesh.citadel.server import Citadel
from testbed.mesh.citadel.faults import (CertExpire, CertRevoke, CitadelHTTP, RootRotate,
                                         citadel_curl_argv)


class Target:
    def __init__(self, url: str) -> None:
        self.citadel = CitadelHTTP(url)


@pytest.fixture
def citadel():
    """A Citadel on its own loop in a thread (faults are synchronous)."""
    loop = asyncio.new_event_loop()
    c = Citadel()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    asyncio.run_coroutine_threadsafe(c.start(), loop).result(10)
    yield c
    asyncio.run_coroutine_threadsafe(c.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    loop.close()


def sds(c: Citadel, service: str) -> dict:
    return CitadelHTTP(c.url)("sds", {"service": service})


def test_round_trip_and_validation():
    for f in (CertRevoke("reviews"), CertExpire("reviews", "shop"), RootRotate(1.0, 30.0)):
        assert fault_from_dict(f.to_dict()) == f
    with pytest.raises(FaultError, match="activate_after_s: expected seconds >= 0"):
        RootRotate(-1)
    with pytest.raises(FaultError, match="service"):
        fault_from_dict({"kind": "cert-revoke"})


def test_revoke_expire_rotate_against_citadel(citadel):
    target = Target(citadel.url)
    issued = sds(citadel, "reviews")
    op = CertRevoke("reviews").apply(target)
    assert op.ok and op.state["revoked"] == [issued["serial"]]
    assert citadel.ca.is_revoked(int(issued["serial"], 16))

    op = CertExpire("reviews").apply(target)
    assert op.ok and op.actions == ("block renewals of reviews",)
    with pytest.raises(RuntimeError, match="HTTP 503"):
        sds(citadel, "reviews")
    assert CertExpire("reviews").revert(target, op).ok
    assert sds(citadel, "reviews")["serial"]

    assert RootRotate(overlap_s=60).apply(target).ok
    assert [r.generation for r in citadel.ca.trust_bundle()] == [1, 2]


def test_target_without_citadel_records_error():
    op = CertRevoke("reviews").apply(object())
    assert not op.ok and "has no citadel(action, body)" in op.error


def test_curl_argv():
    argv = citadel_curl_argv("http://10.0.0.254:15012/", "block", {"service": "a"})
    assert argv[-1] == "http://10.0.0.254:15012/v1/block" and '{"service": "a"}' in argv
