"""A scripted control plane for xDS client tests (no sockets): an injected Transport.

    fake = FakeControlPlane()
    fake.push(CLUSTER, {"version_info": "1", "resources": [...], "nonce": "1"})
    fake.push(ENDPOINT, 304, names=("outbound|80||svc",))
    fake.push(CLUSTER, OSError("connection refused"))     # the control plane is down
    client = XdsClient(server, transport=fake)

Each POST takes the next scripted answer of its (type_url, resource names); with nothing
scripted the poll is held (like a long poll) until something is pushed. Every request is
recorded, so tests read the ACKs and NACKs the client sent.
"""
from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FakeControlPlane", "discovery_response"]


def discovery_response(type_url: str, version: str, resources: list[dict], nonce: str) -> dict:
    return {"version_info": version, "resources": resources, "type_url": type_url, "nonce": nonce}


class FakeControlPlane:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.script: dict[tuple[str, tuple], list] = {}
        self.changed = asyncio.Event()

    def push(self, type_url: str, answer: Any, names: tuple = ()) -> None:
        """Script the next answer: a DiscoveryResponse dict, 304, or an exception to raise."""
        self.script.setdefault((type_url, tuple(names)), []).append(answer)
        self.changed.set()

    async def post(self, cluster: str, path: str, body: dict, timeout_s: float) -> tuple[int, Any]:
        self.requests.append((path, body))
        key = (body["type_url"], tuple(body["resource_names"]))
        while True:
            queue = self.script.get(key) or []
            if queue:
                answer = queue.pop(0)
                if isinstance(answer, BaseException):
                    raise answer
                return (304, None) if answer == 304 else (200, answer)
            self.changed.clear()
            await self.changed.wait()

    def last(self, type_url: str, names: tuple = ()) -> dict:
        """The last DiscoveryRequest the client sent for (type_url, names)."""
        return [b for _, b in self.requests if b["type_url"] == type_url
                and tuple(b["resource_names"]) == tuple(names)][-1]
