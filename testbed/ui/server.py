"""The live page's HTTP server (aiohttp, in a thread of ``minimesh up`` with its own loop).

    GET  /              the page (static/index.html; reads the token from the URL's #fragment)
    GET  /static/NAME   its script and style sheet
    GET  /api/state     the current state (JSON)
    GET  /events        Server-Sent Events: the state, once per tick (``interval_s``, 1 s)
    POST /api/action    {"command": "link-set", "args": "h1 s1 delay=50ms"} (or "apply" with
                        {"yaml": "..."}): run by the shell's own command dispatch, answered
                        {"ok": bool, "output": text the shell printed}

Who may drive it (docs/ui.md): the server listens on loopback unless an address is given;
every request's ``Host`` must name the server itself (a DNS-rebinding page cannot pass it;
see :meth:`UIServer.host_ok`);
an action needs ``Origin`` equal to the page's own origin, a JSON body (a cross-site form
cannot send one without a CORS preflight, which is never answered), and the per-run token
in ``X-Minimesh-Token`` (compared in constant time). The token is printed at start, in the
URL's fragment, which browsers never send to a server or in a Referer.

The collector ticks only while at least one page listens: a closed page costs nothing.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import secrets
import socket
import threading
import time
from importlib import resources
from typing import Any, Callable

from aiohttp import web

__all__ = ["UIServer", "ACTIONS", "parse_listen"]

# what the page may run: the shell's fault, link and apply commands (never a node command)
ACTIONS = ("link-set", "link-down", "link-up", "drop", "restore", "partition", "heal", "crash", "restart",
           "pause", "resume", "apply")
Runner = Callable[[str, str, str], tuple[bool, str]]      # (command, args, pasted yaml) -> (ok, output)


def parse_listen(value: str) -> tuple[str, int]:
    """'ADDR:PORT' (PORT 0 or empty: a free one), ':PORT', or 'ADDR' -> (addr, port). Raises
    ValueError in the option's words."""
    addr, sep, port = value.rpartition(":")
    if not sep:
        addr, port = value, "0"
    addr = addr.strip("[]") or "127.0.0.1"
    if not (port or "0").isdigit() or not 0 <= int(port or "0") <= 65535:
        raise ValueError(f"--ui {value}: PORT {port!r} is not a number in 0..65535 (ADDR:PORT, e.g. 127.0.0.1:8080)")
    return addr, int(port or "0")


def _static(name: str) -> bytes:
    return resources.files("testbed.ui.page").joinpath("static", name).read_bytes()


class UIServer:
    """Serve ``collector`` (a :class:`~testbed.ui.collect.Collector`) and run actions with
    ``run_action``. :meth:`start` returns once listening (:attr:`url`, :attr:`token`)."""

    def __init__(self, collector: Any, run_action: Runner | None, address: str = "127.0.0.1", port: int = 0,
                 interval_s: float = 1.0, token: str | None = None):
        self.collector, self.run_action = collector, run_action
        self.address, self.port, self.interval_s = address, port, interval_s
        self.token = token or secrets.token_urlsafe(18)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._queues: set[asyncio.Queue] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ticks = 0
        self.tick_cpu_s = 0.0

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        return f"{self.url}#token={self.token}"

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> "UIServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:      # reported to start()'s caller
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()
        t = threading.Thread(target=serve, name="minimesh-ui", daemon=True)
        t.start()
        ready.wait()
        if errors:
            raise OSError(f"--ui {self.address}:{self.port}: cannot listen: {errors[0]}")
        ticker = threading.Thread(target=self._tick_loop, name="minimesh-ui-collector", daemon=True)
        ticker.start()
        self._threads = [t, ticker]
        return self

    def stop(self) -> None:
        """End the event streams, close the server, join the threads."""
        self._stop.set()
        self._wake.set()
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            except Exception:      # stopping anyway: the loop is stopped next
                pass
            loop.call_soon_threadsafe(loop.stop)
        for t in self._threads:
            t.join(timeout=5)
        self.collector.unsubscribe()

    async def _shutdown(self) -> None:
        for q in list(self._queues):
            if q.full():
                q.get_nowait()
            q.put_nowait(None)             # each stream ends
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _listen(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=1 << 20)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/favicon.ico", self._no_content)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/events", self._events)
        app.router.add_post("/api/action", self._action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    # --- the collector's ticks ---------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            if self._queues:
                cpu = time.thread_time()
                try:
                    state = self.collector.tick()
                except Exception as e:     # a failed sample is shown on the page, the next tick retries
                    state = {**self.collector.state(), "error": f"{type(e).__name__}: {e}"}
                state["actions"] = self.run_action is not None
                self.tick_cpu_s += time.thread_time() - cpu
                self.ticks += 1
                data = json.dumps(state, separators=(",", ":"))
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._broadcast, data)
            self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - start)))
            self._wake.clear()

    def _broadcast(self, data: str) -> None:
        for q in list(self._queues):
            if q.full():
                q.get_nowait()
            q.put_nowait(data)

    # --- who may ask -----------------------------------------------------------------------------

    def host_ok(self, host: str) -> bool:
        """Does a request's Host header name this server? Its port, and: the address it listens
        on (with localhost for loopback), or, listening on a wildcard address, an IP literal
        or this machine's name. Never a DNS name of someone else's (DNS rebinding)."""
        name, sep, port = host.rpartition(":")
        if not sep or port != str(self.port):
            return False
        name = name.strip("[]").lower()
        names = {self.address.lower()}
        if self.address in ("127.0.0.1", "::1", "localhost"):
            names |= {"localhost", "127.0.0.1", "::1"}
        if self.address in ("0.0.0.0", "::", ""):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                pass
        return name in names

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.host_ok(request.host):
            return web.json_response({"ok": False, "output": f"Host {request.host!r} is not this server "
                                      f"({self.address}:{self.port}); refused"}, status=403)
        return await handler(request)

    def check_action(self, request: web.Request) -> str | None:
        """Why an action request is refused, or None."""
        origin = request.headers.get("Origin")
        if origin is None or origin != f"http://{request.host}":
            return f"Origin {origin!r} is not this page's origin (http://{request.host}); refused"
        if request.content_type != "application/json":
            return "an action is a JSON body (Content-Type: application/json)"
        given = request.headers.get("X-Minimesh-Token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return "wrong or missing token: open the URL `minimesh up --ui` printed (it ends with #token=...)"
        return None

    # --- handlers -------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"})

    async def _no_content(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"ui.js": "application/javascript", "ui.css": "text/css", "LICENSE.txt": "text/plain"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=types[name], charset="utf-8")

    async def _state(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, self.collector.state)
        return web.json_response({**state, "actions": self.run_action is not None})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        q: asyncio.Queue = asyncio.Queue(maxsize=2)
        self._queues.add(q)
        self._wake.set()
        try:
            while (data := await q.get()) is not None:
                await resp.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._queues.discard(q)
        return resp

    async def _action(self, request: web.Request) -> web.Response:
        refused = self.check_action(request)
        if refused is not None:
            return web.json_response({"ok": False, "output": refused}, status=403)
        if self.run_action is None:
            return web.json_response({"ok": False, "output": "this view takes no actions"}, status=403)
        try:
            body = await request.json()
            command, args, text = str(body["command"]), str(body.get("args", "")), str(body.get("yaml", ""))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"ok": False, "output": 'expected {"command": ..., "args": ...}'}, status=400)
        if command not in ACTIONS:
            return web.json_response({"ok": False, "output": f"{command!r}: not an action; allowed: "
                                      f"{', '.join(ACTIONS)}"}, status=400)
        loop = asyncio.get_running_loop()
        ok, output = await loop.run_in_executor(None, self.run_action, command, args, text)
        self._wake.set()         # the next state soon, with the action's effect
        return web.json_response({"ok": ok, "output": output})     # a rejected command is an answer, not an HTTP error
