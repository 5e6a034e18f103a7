"""The registration agent of one mesh instance (a process on the instance's host).

    python -m testbed.mesh.deploy.agent --etcd URL[,URL...] --service S --version V \
        --instance I --host H --ip IP --port P --app-port A --ttl 5

Waits until the app answers TCP on 127.0.0.1:A and the sidecar's inbound listener on
IP:P (so an instance is never routed to before it can answer), then registers it in
etcd with a lease of ``--ttl`` seconds and keeps the lease alive
(:class:`~testbed.mesh.etcd.registry.Registrar`). SIGTERM/SIGINT: revoke the lease (the key
disappears at once) and exit. If the agent dies (its host crashed, SIGKILL), the key
disappears when the lease expires, within the TTL. Prints one JSON line per event.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from testbed.aio import stop_event
from testbed.mesh.etcd.client import EtcdClient, EtcdError
from testbed.mesh.etcd.registry import Registrar
from testbed.mesh.model import Endpoint

__all__ = ["main"]


async def _wait_tcp(ip: str, port: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(ip, port), 1.0)
            w.close()
            return
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)


def _log(kind: str, details: dict) -> None:
    print(json.dumps({"t": time.time(), "event": kind, **details}), flush=True)


async def _run(a: argparse.Namespace) -> int:
    stop = stop_event()
    await _wait_tcp("127.0.0.1", a.app_port, stop)
    await _wait_tcp(a.ip, a.port, stop)
    ep = Endpoint(a.service, a.version, a.instance, a.host, a.ip, a.port)
    async with EtcdClient(a.etcd.split(","), timeout_s=1.0) as client:
        reg = Registrar(client, on_event=_log)
        while not stop.is_set():
            try:
                await reg.register(ep, a.ttl)
                break
            except EtcdError as e:  # the cluster may still be electing its first leader
                _log("register_retry", {"error": str(e)})
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
        await stop.wait()
        if reg.lease_id is not None:
            try:
                await reg.deregister()
            except EtcdError as e:
                _log("deregister_failed", {"error": str(e)})
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.mesh.deploy.agent")
    p.add_argument("--etcd", required=True, help="comma-separated client URLs")
    for name in ("service", "version", "instance", "host", "ip"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--port", type=int, required=True, help="the sidecar's inbound port")
    p.add_argument("--app-port", type=int, required=True)
    p.add_argument("--ttl", type=int, default=5)
    return asyncio.run(_run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
