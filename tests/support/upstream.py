"""Echo upstreams running in a background thread of the test process.

    with Upstreams({"a": Identity("a", "v1", "a-0")}) as ups:
        ups.port("a"); ups.records("a")   # every request that reached instance a

Each upstream is :func:`testbed.apps.echo.make_app` (the same app the mesh runs as
``builtin:echo``); the records are appended as requests *arrive*, so the number of
records is the number of upstream attempts a proxy made.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Mapping

from aiohttp import web

from testbed.apps.echo import Behaviour, Identity, make_app
from tests.support.ports import free_ports

__all__ = ["Upstreams"]


class Upstreams:
    def __init__(self, specs: Mapping[str, Identity | tuple[Identity, Behaviour]],
                 host: str = "127.0.0.1"):
        self._specs = {k: (v if isinstance(v, tuple) else (v, Behaviour())) for k, v in specs.items()}
        self.host = host
        self._ports = dict(zip(self._specs, free_ports(len(self._specs), host), strict=True))
        self._records: dict[str, list[dict[str, Any]]] = {k: [] for k in self._specs}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []

    def port(self, name: str) -> int:
        return self._ports[name]

    def records(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records[name])

    def total(self) -> int:
        with self._lock:
            return sum(len(r) for r in self._records.values())

    def _recorder(self, name: str):
        def record(rec: dict[str, Any]) -> None:
            with self._lock:
                self._records[name].append(rec)
        return record

    async def _start(self) -> None:
        for name, (identity, behaviour) in self._specs.items():
            runner = web.AppRunner(make_app(identity, behaviour, self._recorder(name)),
                                   access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, self.host, self._ports[name]).start()

    async def _stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def __enter__(self) -> "Upstreams":
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
