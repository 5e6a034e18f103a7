"""Command line: ``python -m proxy -c CONFIG.yaml`` (like ``envoy -c``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from proxy import __version__
from proxy.config.bootstrap import Bootstrap, load_bootstrap
from proxy.config.reader import ConfigError
from proxy.errors import StartupError
from proxy.server import Server

__all__ = ["main", "build_parser"]

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minimesh-proxy", description="Envoy-compatible HTTP/1.1 sidecar")
    p.add_argument("--version", action="version", version=f"%(prog)s version: {__version__}",
                   help="print the version (from the package metadata) and exit, as envoy --version")
    p.add_argument("-c", "--config-path", dest="config", required=True, help="bootstrap YAML or JSON")
    p.add_argument("--mode", choices=("serve", "validate"), default="serve",
                   help="validate: check the config and exit (0 = accepted)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="accepted for Envoy compatibility; minimesh-proxy always runs one worker")
    p.add_argument("-l", "--log-level", default="info", choices=sorted(LEVELS))
    p.add_argument("--service-node", default="", help="node.id")
    p.add_argument("--service-cluster", default="", help="node.cluster")
    p.add_argument("--base-id", type=int, default=0, help="accepted for Envoy compatibility; ignored")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default event loop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=LEVELS[args.log_level], stream=sys.stderr,
                        format="[%(asctime)s][%(levelname)s][%(name)s] %(message)s")
    log = logging.getLogger("proxy")
    try:
        bootstrap = load_bootstrap(args.config, args.service_node, args.service_cluster)
    except ConfigError as e:
        print(f"error initializing configuration '{args.config}': {e}", file=sys.stderr)
        return 1
    if args.mode == "validate":
        print(f"configuration '{args.config}' OK")
        return 0
    if args.concurrency != 1:
        log.info("--concurrency %d requested; minimesh-proxy runs one worker", args.concurrency)
    loop_factory = None             # asyncio's default event loop
    if not args.no_uvloop:
        try:
            import uvloop        # late: optional; without it asyncio's own loop serves
            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(bootstrap, args.config, log))
    except KeyboardInterrupt:
        return 0


async def _serve(bootstrap: Bootstrap, config_path: str, log: logging.Logger) -> int:
    server = Server(bootstrap)
    server.config_path = config_path
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.start()
    except (StartupError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        await server.stop()
        return 1
    names = ", ".join(f"{lst.spec.name}@{lst.spec.address}:{lst.server.sockets[0].getsockname()[1]}"
                      for lst in server.listener_manager.listeners.values())
    log.info("minimesh-proxy ready (1 worker): listeners %s%s", names or "(none)",
             f"; admin {server.admin.spec.address}:{server.admin.port}" if server.admin else "")
    await server.wait_stopped()
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
