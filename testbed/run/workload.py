"""Open-loop workloads that write their operations into a run's ``history.jsonl``.

Run inside a testbed host (``tb.popen(host, [python, "-m", "testbed.run.workload", ...])``) so
the traffic leaves from that host; every completed operation is appended (and flushed) to
the history at once, so a killed run keeps what it recorded.

    python -m testbed.run.workload http --url http://10.0.0.2:15001/ --rate 50 --duration 20 \\
        --history out/history.jsonl --t0 <monotonic seconds of the run's start> --client c1
    python -m testbed.run.workload etcd --endpoints http://10.0.0.11:2379,... --rate 10 ...
    python -m testbed.run.workload registry --endpoints ... --register svc/v1/i1 --observe 0.5 ...

**No coordinated omission**: request *i* is scheduled at ``start + i / rate`` whatever the
earlier ones are doing (each runs in its own task), and its latency is measured from that
scheduled time, not from when the client got round to sending it. ``--t0`` is the
``time.monotonic()`` value of the run's time zero (the parent's :class:`RunClock`), the same
on both sides because CLOCK_MONOTONIC is shared by all network namespaces.

The pure parts (:func:`send_times`, :func:`describe_response`) are unit-tested without a network.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from testbed.history import History
from testbed.mesh.model import Endpoint

__all__ = ["send_times", "ResponseInfo", "describe_response", "OffsetClock", "run_http", "run_etcd", "run_registry",
           "workload_argv", "main"]

# Envoy's local-reply bodies -> response flag (the proxy sends no flags header by default)
_BODY_FLAGS = (("upstream request timeout", "UT"), ("no healthy upstream", "UH"),
               ("upstream connect error or disconnect/reset before headers. reset reason: overflow", "UO"),
               ("upstream connect error or disconnect/reset before headers. reset reason: connection failure", "UF"),
               ("upstream connect error or disconnect/reset before headers", "UC"))


def send_times(rate: float, duration_s: float, start_s: float = 0.0) -> list[float]:
    """Scheduled send times of an open-loop workload: ``start + i / rate`` for every i
    with ``i / rate < duration``."""
    if rate <= 0:
        raise ValueError(f"rate {rate}: must be > 0 requests per second")
    if duration_s < 0:
        raise ValueError(f"duration {duration_s}: must be >= 0 seconds")
    n = int(duration_s * rate - 1e-9) + 1 if duration_s > 0 else 0
    return [start_s + i / rate for i in range(n)]


@dataclass(frozen=True)
class ResponseInfo:
    instance: str
    version: str
    retries: int
    flags: str


def describe_response(status: int, headers: Mapping[str, str], body: bytes) -> ResponseInfo:
    """Which instance/version answered (echo's ``x-echo-*`` headers, else its JSON body),
    retries (``x-envoy-attempt-count`` - 1) and response flags (``x-envoy-response-flags``,
    else inferred from Envoy's local-reply body)."""
    h = {k.lower(): v for k, v in headers.items()}
    instance, version = h.get("x-echo-instance", ""), h.get("x-echo-version", "")
    if not instance and body[:1] == b"{":
        try:
            doc = json.loads(body)
            instance, version = str(doc.get("instance", "")), str(doc.get("version", ""))
        except (ValueError, AttributeError):
            pass
    try:
        retries = max(0, int(h.get("x-envoy-attempt-count", "1")) - 1)
    except ValueError:
        retries = 0
    flags = h.get("x-envoy-response-flags", "")
    if not flags and status >= 500 and not instance:
        text = body[:200].decode("latin-1", "replace")
        flags = next((f for prefix, f in _BODY_FLAGS if text.startswith(prefix)), "")
    return ResponseInfo(instance, version, retries, flags)


class OffsetClock:
    """Seconds since ``t0`` (a ``time.monotonic()`` value): the run's clock in another process."""

    def __init__(self, t0: float):
        self.t0 = t0

    def now(self) -> float:
        return time.monotonic() - self.t0


async def _open_loop(clock: OffsetClock, times: Sequence[float], one: Any) -> None:
    tasks = []
    for i, t in enumerate(times):
        delay = t - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, t)))
    await asyncio.gather(*tasks)


async def run_http(hist: History, clock: OffsetClock, url: str, rate: float, duration_s: float,
                   start_s: float, headers: Mapping[str, str], timeout_s: float, client: str,
                   service: str) -> None:
    import aiohttp      # late: aiohttp (~150 ms) only in the workloads that use it (started at a planned time)
    times = send_times(rate, duration_s, start_s)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def one(i: int, t: float) -> None:
            status, info, error = None, ResponseInfo("", "", 0, ""), None
            try:
                async with session.get(url, headers=dict(headers),
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                    body = await resp.read()
                    status = resp.status
                    info = describe_response(status, dict(resp.headers), body)
            except asyncio.TimeoutError:
                error = f"client timeout after {timeout_s:g} s"
            except aiohttp.ClientError as e:
                error = f"{type(e).__name__}: {e}"
            hist.request(t_start=t, t_end=clock.now(), status=status, instance=info.instance,
                         version=info.version, retries=info.retries, flags=info.flags, error=error,
                         client=client, service=service, id=i)
        await _open_loop(clock, times, one)


async def run_etcd(hist: History, clock: OffsetClock, endpoints: Sequence[str], rate: float,
                   duration_s: float, start_s: float, key: str, process: str, timeout_s: float,
                   reads: str) -> None:
    """Writes ``<process>-<i>`` to ``key`` at ``rate``; after each write attempt, a read
    (``reads``: none | serializable | linearizable | both). Every op is an invoke plus its
    completion in the history (``history.etcd_call``): unknown outcomes are ``info``."""
    from testbed.mesh.etcd.client import EtcdClient     # late: aiohttp, as in run_http
    times = send_times(rate, duration_s, start_s)
    kinds = {"none": (), "serializable": (True,), "linearizable": (False,), "both": (False, True)}[reads]
    async with EtcdClient(endpoints, timeout_s=timeout_s) as cli:
        async def one(i: int, t: float) -> None:
            # one logical process per op sequence (Jepsen: a process does one op at a time)
            proc = f"{process}-{i}"
            value = f"{process}-{i}"
            try:
                await hist.etcd_call(proc, "write", key, value, lambda: cli.put(key, value))
            except Exception:
                pass
            for ser in kinds:
                async def read(ser: bool = ser) -> Any:
                    kv = await cli.get(key, serializable=ser)
                    return kv.value.decode() if kv is not None else None
                try:
                    await hist.etcd_call(f"{proc}-r{int(ser)}", "read", key, None, read, serializable=ser)
                except Exception:
                    pass
        await _open_loop(clock, times, one)


async def run_registry(hist: History, clock: OffsetClock, endpoints: Sequence[str], duration_s: float,
                       register: str, ttl_s: int, observe_every_s: float, timeout_s: float) -> None:
    """``register``: keep instance <service>/<version>/<instance> (``svc/v1/name``)
    registered with a lease of ``ttl_s`` (Registrar; its events go to the history as source
    ``registrar:<instance>``). ``observe_every_s`` > 0: list the registry (linearizable) at
    that period and record ``endpoint_added`` / ``endpoint_removed`` (source ``observer``)."""
    # late: aiohttp, as in run_http
    from testbed.mesh.etcd.client import EtcdClient, EtcdError
    from testbed.mesh.etcd.registry import DEFAULT_PREFIX, Registrar, parse_endpoint
    async with EtcdClient(endpoints, timeout_s=timeout_s) as cli:
        reg = None
        if register:
            service, version, instance = register.split("/")
            reg = Registrar(cli, on_event=hist.event_hook(f"registrar:{instance}"))
            await reg.register(Endpoint(service, version, instance, "", "10.0.0.1", 8080), ttl_s)
        end = clock.now() + duration_s
        seen: set[str] | None = None
        while clock.now() < end:
            if observe_every_s > 0:
                try:
                    r = await cli.range(DEFAULT_PREFIX, prefix=True)
                    now = {ep.instance for ep in (parse_endpoint(kv) for kv in r.kvs) if ep is not None}
                    for inst in sorted(now - (seen or set())):
                        hist.event("observer", "endpoint_added", instance=inst, revision=r.revision)
                    for inst in sorted((seen or set()) - now):
                        hist.event("observer", "endpoint_removed", instance=inst, revision=r.revision)
                    seen = now
                except EtcdError as e:
                    hist.event("observer", "list_failed", error=str(e)[:200])
            await asyncio.sleep(observe_every_s if observe_every_s > 0 else 0.2)
        if reg is not None:
            await reg.stop_keepalive()


def workload_argv(python: str, kind: str, history: str, t0: float, rate: float, duration_s: float,
                  start_s: float = 0.0, **options: Any) -> list[str]:
    """The command line for ``python -m testbed.run.workload KIND ...``; ``options`` are the
    long options with ``_`` for ``-`` (lists joined by commas; ``header`` as a mapping)."""
    argv = [python, "-m", "testbed.run.workload", kind, "--history", history, "--t0", repr(t0),
            "--rate", repr(rate), "--duration", repr(duration_s), "--start", repr(start_s)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "header":
            for k, v in dict(value).items():
                argv += [flag, f"{k}: {v}"]
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, str(value)]
    return argv


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m testbed.run.workload", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("http", "etcd", "registry"):
        s = sub.add_parser(kind)
        s.add_argument("--history", required=True, help="history.jsonl to append to")
        s.add_argument("--t0", type=float, required=True, help="time.monotonic() of the run's time zero")
        s.add_argument("--rate", type=float, required=True, help="operations per second")
        s.add_argument("--duration", type=float, required=True, help="seconds of sending")
        s.add_argument("--start", type=float, default=None, help="run time of the first send (default: now)")
        s.add_argument("--timeout", type=float, default=10.0, help="per-operation client timeout, seconds")
    h = sub.choices["http"]
    h.add_argument("--url", required=True)
    h.add_argument("--header", action="append", default=[], metavar="'Name: value'")
    h.add_argument("--client", default="")
    h.add_argument("--service", default="")
    e = sub.choices["etcd"]
    e.add_argument("--endpoints", required=True, help="comma-separated client URLs")
    e.add_argument("--key", default="/minimesh/register")
    e.add_argument("--process", default="c")
    e.add_argument("--reads", choices=("none", "serializable", "linearizable", "both"), default="both")
    g = sub.choices["registry"]
    g.add_argument("--endpoints", required=True, help="comma-separated client URLs")
    g.add_argument("--register", default="", metavar="SERVICE/VERSION/INSTANCE")
    g.add_argument("--ttl", type=int, default=3, help="lease TTL of the registration, seconds")
    g.add_argument("--observe", type=float, default=0.0, metavar="SECONDS", help="list the registry this often")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    clock = OffsetClock(a.t0)
    start = clock.now() if a.start is None else a.start
    with History(a.history, clock=clock) as hist:
        if a.kind == "http":
            headers = {}
            for item in a.header:
                name, sep, value = item.partition(":")
                if not sep:
                    raise SystemExit(f"--header {item!r}: use 'Name: value'")
                headers[name.strip()] = value.strip()
            coro = run_http(hist, clock, a.url, a.rate, a.duration, start, headers, a.timeout,
                            a.client, a.service)
        elif a.kind == "registry":
            coro = run_registry(hist, clock, a.endpoints.split(","), a.duration, a.register, a.ttl,
                                a.observe, a.timeout)
        else:
            coro = run_etcd(hist, clock, a.endpoints.split(","), a.rate, a.duration, start, a.key,
                            a.process, a.timeout, a.reads)
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
