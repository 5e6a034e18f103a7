"""Identity faults for the fault model: values registered by kind with the registry of
:mod:`testbed.faults.base` when this module is imported (the CLI, the experiment runner and
:mod:`testbed.mesh.deploy.mesh` import it, so fault YAML and fault sessions know these kinds).

  cert-revoke     {service, namespace?}        revoke every live certificate of a service
                                               (instant; peers refuse it after their next
                                               trust-bundle refresh: reason=revoked)
  cert-expire     {service, namespace?}        Citadel refuses the service's renewals, so its
                                               certificate expires at its not_after (then
                                               reason=expired); revert lets renewals through
  ca-root-rotate  {activate_after_s?, overlap_s?}  new root (instant)
  ca-stop         {process?: citadel, signal?: SIGKILL}  stop the CA: a `crash` of the
                                               Citadel process (renewals and bundle refreshes
                                               fail: citadel.failures; certificates expire);
                                               revert restarts it (--state-dir keeps roots and
                                               revocations: citadel/store.py). `pause` on the
                                               same process freezes it instead (requests time out)

The faults talk to the target's `citadel(action, body) -> dict` (actions: revoke, block,
rotate_root = Citadel's POST /v1/<action>). `CitadelHTTP(url)` implements it over HTTP for a
target that can reach Citadel directly; a Mininet target runs `citadel_curl_argv(...)` on the
control-plane host instead (testbed subnets are not routed to the root namespace).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, ClassVar

from testbed.faults.kinds import Crash
from testbed.faults.base import Fault, FaultError, Op, _name, _perform, register


def _citadel(target: Any):
    fn = getattr(target, "citadel", None)
    if fn is None:
        raise FaultError(f"{type(target).__name__} has no citadel(action, body): identity "
                         "faults need a target that can reach Citadel")
    return fn


@dataclass(frozen=True)
class CitadelHTTP:
    """`target.citadel` over HTTP (loopback or any reachable address)."""

    url: str
    timeout_s: float = 5.0

    def __call__(self, action: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url.rstrip('/')}/v1/{action}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"Citadel {action}: HTTP {e.code} "
                               f"{e.read().decode(errors='replace')}") from None


def citadel_curl_argv(url: str, action: str, body: dict) -> list[str]:
    """The same call as a command to run inside a host's namespace."""
    return ["curl", "-sS", "--fail-with-body", "-X", "POST", "-H",
            "content-type: application/json", "--data", json.dumps(body),
            f"{url.rstrip('/')}/v1/{action}"]


@dataclass(frozen=True)
class _ServiceFault(Fault):
    service: str
    namespace: str = "default"

    def __post_init__(self) -> None:
        _name(self.service, "service")
        _name(self.namespace, "namespace")

    def _body(self, **extra: Any) -> dict:
        return {"service": self.service, "namespace": self.namespace, **extra}


@register
@dataclass(frozen=True)
class CertRevoke(_ServiceFault):
    kind: ClassVar[str] = "cert-revoke"
    instant: ClassVar[bool] = True

    def describe(self) -> str:
        return f"revoke certificates of {self.namespace}/{self.service}"

    def apply(self, target: Any) -> Op:
        out: dict = {}
        op = _perform(self, "apply", [(f"revoke {self.service}", lambda: out.update(
            _citadel(target)("revoke", self._body())))])
        return Op(op.fault, op.phase, op.actions, op.ok, op.error, {"revoked": out.get("revoked")})

    def revert(self, target: Any, applied: Op | None = None) -> Op:
        return Op(self, "revert")  # a revocation is forever; the next renewal gets a new serial


@register
@dataclass(frozen=True)
class CertExpire(_ServiceFault):
    kind: ClassVar[str] = "cert-expire"

    def describe(self) -> str:
        return f"let the certificate of {self.namespace}/{self.service} expire"

    def apply(self, target: Any) -> Op:
        return _perform(self, "apply", [(f"block renewals of {self.service}", lambda: _citadel(
            target)("block", self._body(blocked=True)))])

    def revert(self, target: Any, applied: Op | None = None) -> Op:
        return _perform(self, "revert", [(f"unblock renewals of {self.service}", lambda: _citadel(
            target)("block", self._body(blocked=False)))])


@register
@dataclass(frozen=True)
class RootRotate(Fault):
    kind: ClassVar[str] = "ca-root-rotate"
    instant: ClassVar[bool] = True
    activate_after_s: float = 0.0
    overlap_s: float | None = None

    def __post_init__(self) -> None:
        for f in ("activate_after_s", "overlap_s"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or v < 0):
                raise FaultError(f"expected seconds >= 0, got {v!r}", f)

    def describe(self) -> str:
        return "rotate the root CA"

    def apply(self, target: Any) -> Op:
        body = {"activate_after_s": self.activate_after_s, "overlap_s": self.overlap_s}
        out: dict = {}
        op = _perform(self, "apply", [("rotate root", lambda: out.update(
            _citadel(target)("rotate_root", body)))])
        return Op(op.fault, op.phase, op.actions, op.ok, op.error,
                  {"generation": out.get("generation")})

    def revert(self, target: Any, applied: Op | None = None) -> Op:
        return Op(self, "revert")


@register
@dataclass(frozen=True)
class CAStop(Crash):
    """``crash`` of the CA process by default name; revert restarts it (target.restart)."""

    kind: ClassVar[str] = "ca-stop"
    process: str = "citadel"

    def describe(self) -> str:
        return f"stop the CA ({self.process}, {self.signal})"
