"""A UDP echo probe with nanosecond timestamps (ping prints 100 ms+ RTTs as whole ms).

    python -m testbed.links.echo server PORT            # echoes until killed
    python -m testbed.links.echo client HOST PORT COUNT INTERVAL_S
        -> prints one JSON object: {"sent": N, "rtt_ms": [...]} (lost probes omitted)
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

_PKT = struct.Struct("!IQ")  # seq, send time (ns)


def server(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def client(host: str, port: int, count: int, interval: float, wait: float = 2.0) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.setblocking(False)
    rtts: dict[int, float] = {}
    start = time.monotonic()
    sent = 0
    end: float | None = None
    while True:
        now = time.monotonic()
        if sent < count and now >= start + sent * interval:
            s.send(_PKT.pack(sent, time.monotonic_ns()) + bytes(32))
            sent += 1
            if sent == count:
                end = time.monotonic() + wait
            continue
        if end is not None and (now >= end or len(rtts) == count):
            break
        if sent < count:
            next_send = start + sent * interval
        else:
            assert end is not None      # set when the last probe was sent
            next_send = end
        r, _, _ = select.select([s], [], [], max(0.0, next_send - now))
        if r:
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                recv_ns = time.monotonic_ns()
                seq, sent_ns = _PKT.unpack_from(data)
                rtts.setdefault(seq, (recv_ns - sent_ns) / 1e6)
    return {"sent": sent, "rtt_ms": [rtts[k] for k in sorted(rtts)]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        server(int(argv[1]))
        return 0
    if argv[:1] == ["client"]:
        print(json.dumps(client(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
