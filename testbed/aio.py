"""Small asyncio helpers shared by minimesh's long-running processes (apps, Pilot,
registration and SDS agents)."""
from __future__ import annotations

import asyncio
import signal
from typing import Iterable

__all__ = ["stop_event"]


def stop_event(signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> asyncio.Event:
    """An event the running loop sets on any of ``signals`` (default SIGTERM, SIGINT):
    ``await stop_event().wait()`` serves until the process is told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return stop
