"""Echo service: every request is answered with JSON describing who answered and what
arrived, so a client (or a test) can tell which cluster/instance a proxy chose and which
Host, path and headers the proxy forwarded.

    python -m testbed.apps.echo --port 8080 --service reviews --version v2 --instance r2

Response body (``application/json``)::

    {"service": "reviews", "version": "v2", "instance": "r2", "host": "<testbed host>", "authority": "<Host header>",
     "method": "GET", "path": "/raw/path?q", "headers": {"lower-case-name": "value", ...},
     "body_bytes": 0}

Response headers ``x-echo-service``/``x-echo-version``/``x-echo-instance`` say the same.
Optional behaviour for resilience labs and tests (:class:`Behaviour`): fail the first N
requests with a status, and/or delay every answer.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from testbed.aio import stop_event

__all__ = ["Identity", "Behaviour", "make_app", "serve", "main"]


@dataclass(frozen=True)
class Identity:
    service: str = "echo"
    version: str = "v1"
    instance: str = "echo-0"
    node: str = ""             # the testbed host it runs on (Mininet host name)


@dataclass(frozen=True)
class Behaviour:
    fail_first: int = 0        # answer the first N requests with fail_status
    fail_status: int = 503
    delay_ms: int = 0          # wait this long before answering (every request)


def _headers(request: web.Request) -> dict[str, str]:
    seen: dict[str, str] = {}
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return seen


def make_app(identity: Identity = Identity(), behaviour: Behaviour = Behaviour(),
             on_request: Callable[[dict[str, Any]], None] | None = None) -> web.Application:
    """The echo application. ``on_request`` gets each request's record (the JSON body
    without status) as it *arrives*, before any delay: tests count attempts with it."""
    count = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        body = await request.read()
        record = {"service": identity.service, "version": identity.version,
                  "instance": identity.instance, "host": identity.node,
                  "authority": request.headers.get("Host", ""),
                  "method": request.method, "path": request.raw_path,
                  "headers": _headers(request), "body_bytes": len(body)}
        if on_request is not None:
            on_request(record)
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)
        status = behaviour.fail_status if count <= behaviour.fail_first else 200
        return web.Response(status=status, text=json.dumps(record) + "\n",
                            content_type="application/json",
                            headers={"x-echo-service": identity.service,
                                     "x-echo-version": identity.version,
                                     "x-echo-instance": identity.instance})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def serve(app: web.Application, host: str, port: int) -> None:
    """Run ``app`` on host:port until SIGTERM or SIGINT; print one 'listening' line."""

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        print(f"listening on {host}:{port}", flush=True)
        stop = stop_event()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testbed.apps.echo", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--service", default="echo")
    p.add_argument("--version", default="v1")
    p.add_argument("--instance", default=None, help="instance name (default: <service>-<port>)")
    p.add_argument("--node", default=os.environ.get("MINIMESH_HOST") or socket.gethostname(),
                   help="testbed host name reported as 'host' (default: $MINIMESH_HOST or hostname)")
    p.add_argument("--fail-first", type=int, default=0, metavar="N",
                   help="answer the first N requests with --fail-status")
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args(argv)
    identity = Identity(a.service, a.version, a.instance or f"{a.service}-{a.port}", a.node)
    serve(make_app(identity, Behaviour(a.fail_first, a.fail_status, a.delay_ms)), a.bind, a.port)


if __name__ == "__main__":
    main()
