"""Bookinfo, Istio's sample application, as four small aiohttp services.

    python -m testbed.apps.bookinfo --app productpage --port 20000 --version v1 --instance pp-0

* ``productpage`` calls ``details`` and ``reviews`` and shows both;
* ``details`` answers the book's details;
* ``reviews`` v1 shows no stars; v2 calls ``ratings`` and shows **black** stars; v3 calls
  ``ratings`` and shows **red** stars (as in Istio's sample);
* ``ratings`` answers the ratings.

Every response is JSON and says who answered (``service``, ``version``, ``instance``;
also in ``x-echo-*`` response headers, so the mesh load client counts versions). Calls go
to ``http://<service>:<port>/`` (``--<service>-url`` to override), i.e. through the local
sidecar. Trace and routing headers are propagated to every upstream call, as Istio asks
of applications: x-request-id, traceparent, tracestate, b3, x-b3-*, x-ot-span-context,
end-user, user-agent, cookie.

Timeouts are Istio's sample's own, so its fault-injection task plays out the same way:
productpage gives ``details`` 3 s and ``reviews`` 3 s with one retry (6 s in all), and then
shows "Sorry, product reviews are currently unavailable for this book."; reviews v2 waits
10 s for ``ratings`` and v3 2.5 s (hard-coded in Istio's Java reviews service; the task's
"bug": a 7 s delay on ratings is within reviews' 10 s but beyond productpage's 6 s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from testbed.apps.echo import serve

__all__ = ["APPS", "PROPAGATE", "Config", "make_app", "main", "TIMEOUTS", "RATINGS_TIMEOUT_S",
           "REVIEWS_UNAVAILABLE"]

APPS = ("productpage", "details", "reviews", "ratings")
PROPAGATE = ("x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
             "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-ot-span-context",
             "end-user", "user-agent", "cookie")
SESSION = web.AppKey("session", aiohttp.ClientSession)
STARS = {"v1": None, "v2": "black", "v3": "red"}
# (per-try timeout s, retries): Istio's productpage.py and reviews' LibertyRestEndpoint.java
TIMEOUTS = {"details": (3.0, 0), "reviews": (3.0, 1)}
RATINGS_TIMEOUT_S = {"v2": 10.0, "v3": 2.5}
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
DEFAULT_URLS = {"details": "http://details:9080/details/0",
                "reviews": "http://reviews:9080/reviews/0",
                "ratings": "http://ratings:9080/ratings/0"}


@dataclass(frozen=True)
class Config:
    app: str
    version: str = "v1"
    instance: str = ""
    urls: tuple[tuple[str, str], ...] = tuple(DEFAULT_URLS.items())
    timeout_s: float = 30.0        # the session's ceiling; each call has its own (TIMEOUTS)

    def url(self, service: str) -> str:
        return dict(self.urls)[service]


def _forward(request: web.Request) -> dict[str, str]:
    return {k: request.headers[k] for k in PROPAGATE if k in request.headers}


async def _call(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                timeout_s: float, retries: int = 0) -> dict:
    """GET ``url`` with ``timeout_s`` per try and ``retries`` more tries after a timeout or
    a connection error (not after an HTTP error answer, as in Istio's productpage)."""
    for attempt in range(retries + 1):
        try:
            async with session.get(url, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                if r.status != 200:     # e.g. an injected abort: its body is not JSON
                    return {"error": f"{url}: HTTP {r.status}", "status": r.status}
                return await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            failure = {"error": f"{url}: {type(e).__name__}: {e}".rstrip(": "),
                       "attempts": attempt + 1}
    return failure


def make_app(cfg: Config) -> web.Application:
    if cfg.app not in APPS:
        raise ValueError(f"unknown bookinfo app {cfg.app!r}; apps: {', '.join(APPS)}")
    me = {"service": cfg.app, "version": cfg.version, "instance": cfg.instance}

    async def handle(request: web.Request) -> web.Response:
        session = request.app[SESSION]
        hdrs = _forward(request)
        body: dict[str, Any] = dict(me, trace={k: v for k, v in hdrs.items()
                                               if k not in ("user-agent", "cookie")})
        if cfg.app == "productpage":
            details, reviews = await asyncio.gather(
                _call(session, cfg.url("details"), hdrs, *TIMEOUTS["details"]),
                _call(session, cfg.url("reviews"), hdrs, *TIMEOUTS["reviews"]))
            if "error" in reviews:
                reviews["message"] = REVIEWS_UNAVAILABLE
            if "error" in details:
                details["message"] = DETAILS_UNAVAILABLE
            body.update(product={"id": 0, "title": "The Comedy of Errors"},
                        details=details, reviews=reviews)
        elif cfg.app == "details":
            body.update(id=0, author="William Shakespeare", year=1595, type="paperback",
                        pages=200, publisher="PublisherA", language="English",
                        isbn_10="1234567890", isbn_13="123-1234567890")
        elif cfg.app == "ratings":
            body.update(id=0, ratings={"Reviewer1": 5, "Reviewer2": 4})
        else:
            color = STARS.get(cfg.version)
            book_reviews: list[dict[str, Any]] = [
                {"reviewer": "Reviewer1", "text": "An extremely entertaining play by "
                 "Shakespeare. The slapstick humour is refreshing!"},
                {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining. The "
                 "play lacks thematic depth when compared to other plays by Shakespeare."}]
            if color is not None:
                ratings = await _call(session, cfg.url("ratings"), hdrs,
                                      RATINGS_TIMEOUT_S.get(cfg.version, 2.5))
                body["ratings_from"] = {k: ratings.get(k) for k in ("version", "instance", "error")
                                        if k in ratings}
                for r in book_reviews:
                    stars = (ratings.get("ratings") or {}).get(r["reviewer"])
                    r["rating"] = {"stars": stars, "color": color} if stars is not None else \
                        {"error": "Ratings service is currently unavailable"}
            body["reviews"] = book_reviews
            body["stars"] = color
        return web.Response(status=200, text=json.dumps(body) + "\n",
                            content_type="application/json",
                            headers={"x-echo-service": cfg.app, "x-echo-version": cfg.version,
                                     "x-echo-instance": cfg.instance})

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_s), auto_decompress=True,
            skip_auto_headers=("User-Agent",))
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m testbed.apps.bookinfo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True, choices=APPS)
    p.add_argument("--port", type=int, default=9080)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--service", default=None, help="accepted for the mesh's run line (= --app)")
    p.add_argument("--version", default="v1")
    p.add_argument("--instance", default=None)
    p.add_argument("--node", default=None, help="testbed host it runs on (accepted for the mesh's run line)")
    for svc, url in DEFAULT_URLS.items():
        p.add_argument(f"--{svc}-url", default=url)
    a = p.parse_args(argv)
    urls = tuple((s, getattr(a, f"{s}_url")) for s in DEFAULT_URLS)
    cfg = Config(a.app, a.version, a.instance or f"{a.app}-{a.version}", urls)
    serve(make_app(cfg), a.bind, a.port)


if __name__ == "__main__":
    main()
