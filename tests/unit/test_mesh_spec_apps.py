"""Built-in mesh apps without a mesh (loopback, no root): Bookinfo's call graph, stars per
reviews version, trace-header propagation; the load client's counting."""
from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
import pytest
from aiohttp import web

from testbed.apps.bookinfo import Config, make_app
from testbed.mesh.deploy.load_client import run as client_run
from testbed.mesh.etcd.cluster import free_ports

TRACE = {"x-request-id": "r-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "b3": "80f198ee56343ba8-e457b5a2e4d86bd1-1", "end-user": "jason"}


async def _serve(apps: dict[str, web.Application], ports: dict[str, int]) -> list[web.AppRunner]:
    runners = []
    for name, app in apps.items():
        r = web.AppRunner(app, access_log=None)
        await r.setup()
        await web.TCPSite(r, "127.0.0.1", ports[name]).start()
        runners.append(r)
    return runners


@pytest.mark.parametrize("version, color", [("v1", None), ("v2", "black"), ("v3", "red")])
def test_bookinfo_graph_stars_and_trace_propagation(version, color):
    names = ("productpage", "details", "reviews", "ratings")
    ports = dict(zip(names, free_ports(4), strict=True))
    urls = tuple((s, f"http://127.0.0.1:{ports[s]}/{s}/0") for s in ("details", "reviews", "ratings"))
    apps = {n: make_app(Config(n, version if n == "reviews" else "v1", f"{n}-0", urls)) for n in names}

    async def go() -> dict:
        runners = await _serve(apps, ports)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{ports['productpage']}/productpage", headers=TRACE) as r:
                    assert r.status == 200 and r.headers["x-echo-version"] == "v1"
                    return await r.json()
        finally:
            for r in runners:
                await r.cleanup()
    page = asyncio.run(go())
    reviews = page["reviews"]
    assert (page["service"], page["details"]["service"], reviews["service"]) == \
        ("productpage", "details", "reviews")
    assert (reviews["version"], reviews["stars"]) == (version, color)
    for svc in (page, page["details"], reviews):
        assert svc["trace"] == TRACE
    if color is None:
        assert "ratings_from" not in reviews and "rating" not in reviews["reviews"][0]
    else:
        assert reviews["ratings_from"]["version"] == "v1"
        assert [r["rating"] for r in reviews["reviews"]] == [{"stars": 5, "color": color},
                                                            {"stars": 4, "color": color}]


def test_reviews_reports_an_unavailable_ratings_service():
    port, dead = free_ports(2)
    app = make_app(Config("reviews", "v2", "r", (("ratings", f"http://127.0.0.1:{dead}/"),
                                                 ("details", ""), ("reviews", ""))))

    async def go() -> dict:
        (runner,) = await _serve({"reviews": app}, {"reviews": port})
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
                return await r.json()
        finally:
            await runner.cleanup()
    body = asyncio.run(go())
    assert body["reviews"][0]["rating"] == {"error": "Ratings service is currently unavailable"}
    assert "error" in body["ratings_from"]


def test_load_client_counts_codes_and_versions():
    (port,) = free_ports(1)
    seen = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent"))
        v = "v2" if len(seen) % 4 == 0 else "v1"
        return web.Response(text=json.dumps({"version": v}), status=200 if len(seen) != 3 else 503,
                            headers={} if len(seen) % 2 else {"x-echo-version": v})

    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/{t:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait(5)
    try:
        r = client_run(f"http://127.0.0.1:{port}/x", 8, {"User-Agent": "Android"})
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    assert r["codes"] == {"200": 7, "503": 1} and r["errors"] == 0
    assert r["versions"] == {"v1": 6, "v2": 2} and set(seen) == {"Android"}
    dead = client_run(f"http://127.0.0.1:{free_ports(1)[0]}/", 2, {}, timeout_s=1)
    assert dead["errors"] == 2 and dead["first_error"]


def test_bookinfo_timeouts_are_istios():
    """Istio's productpage: details 3 s, reviews 3 s + 1 retry; reviews v2 -> ratings 10 s,
    v3 2.5 s (the numbers Istio's fault-injection task reasons with)."""
    from testbed.apps import bookinfo
    assert bookinfo.TIMEOUTS == {"details": (3.0, 0), "reviews": (3.0, 1)}
    assert bookinfo.RATINGS_TIMEOUT_S == {"v2": 10.0, "v3": 2.5}


def test_productpage_retries_a_slow_reviews_once_then_shows_istios_message(monkeypatch):
    """Scaled down (0.3 s per try): a reviews that never answers in time is tried twice, so
    the page comes after 2 tries (~0.6 s) with Istio's "unavailable" message."""
    import time

    from testbed.apps import bookinfo
    monkeypatch.setitem(bookinfo.TIMEOUTS, "reviews", (0.3, 1))
    names = ("productpage", "details", "reviews")
    ports = dict(zip(names, free_ports(3), strict=True))
    urls = tuple((s, f"http://127.0.0.1:{ports.get(s, 1)}/{s}/0") for s in ("details", "reviews", "ratings"))
    calls: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        await asyncio.sleep(2)
        return web.Response(text="{}")
    slow_app = web.Application()
    slow_app.router.add_get("/{tail:.*}", slow)
    apps = {"productpage": make_app(Config("productpage", "v1", "pp-0", urls)),
            "details": make_app(Config("details", "v1", "d-0", urls)), "reviews": slow_app}

    async def go() -> tuple[dict, float]:
        runners = await _serve(apps, ports)
        try:
            async with aiohttp.ClientSession() as s:
                t0 = time.monotonic()
                async with s.get(f"http://127.0.0.1:{ports['productpage']}/productpage") as r:
                    return await r.json(), time.monotonic() - t0
        finally:
            for r in runners:
                await r.cleanup()
    page, elapsed = asyncio.run(go())
    assert len(calls) == 2 and 0.55 < elapsed < 1.5, (calls, elapsed)
    assert page["reviews"]["message"] == bookinfo.REVIEWS_UNAVAILABLE
    assert page["reviews"]["attempts"] == 2 and "TimeoutError" in page["reviews"]["error"]
    assert page["details"]["service"] == "details"
