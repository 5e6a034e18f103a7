"""DNS inside the testbed: a dnsmasq (Debian ``dnsmasq-base``) on one host answers A
records from a hosts-format file; other hosts' /etc/resolv.conf point at it, so programs
resolve names the real way (libc, c-ares, Envoy's logical_dns) without any route out.

    dns = DnsServer(tb, "dns", {"gwadvnet20.github.io": "10.0.0.3"}, workdir).start()
    dns.serve("h1", "h2")                                 # their resolv.conf -> dns's IP
    dns.resolve("h1", "gwadvnet20.github.io")             # ['10.0.0.3'] via h1's resolver
    dns.set_records({...})                                # rewrite + SIGHUP: dnsmasq rereads

dnsmasq runs in the foreground (journaled by ``Testbed.popen``), with no upstream servers
(``--no-resolv``), without the host's /etc/hosts (``--no-hosts``), bound only to the host's
testbed address, logging every query to its log file.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Mapping

from testbed.net.running import RunningTestbed

__all__ = ["DnsError", "render_records", "dnsmasq_argv", "DnsServer"]

DNSMASQ = "dnsmasq"
_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


class DnsError(RuntimeError):
    pass


def render_records(records: Mapping[str, str]) -> str:
    """A hosts-format file (``IP<TAB>name``) for dnsmasq's ``--addn-hosts``; names and
    addresses are checked first."""
    lines = []
    for name, ip in sorted(records.items()):
        if not _NAME.match(name):
            raise DnsError(f"DNS record {name!r}: not a valid host name (letters, digits, '-', dots)")
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise DnsError(f"DNS record {name!r}: {ip!r} is not an IPv4 address") from None
        lines.append(f"{ip}\t{name}")
    return "".join(line + "\n" for line in lines)


def dnsmasq_argv(listen_ip: str, records_file: Path, pid_file: Path) -> list[str]:
    return [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--addn-hosts={records_file}", f"--listen-address={listen_ip}", "--bind-interfaces",
            "--port=53", f"--pid-file={pid_file}", "--log-queries", "--log-facility=-"]


class DnsServer:
    """dnsmasq on ``host`` of a started :class:`testbed.net.network.Testbed` (``tb``)."""

    def __init__(self, tb: RunningTestbed, host: str, records: Mapping[str, str], workdir: Path):
        if shutil.which(DNSMASQ) is None:
            raise DnsError("dnsmasq not found: apt-get install dnsmasq-base")
        self.tb, self.host = tb, host
        self.records = dict(records)
        self.workdir = Path(workdir)
        self.records_file = self.workdir / f"dns-{host}.hosts"
        self.log_file = self.workdir / f"dns-{host}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def ip(self) -> str:
        return self.tb.ip(self.host)

    def start(self) -> "DnsServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # dnsmasq rereads the file as 'nobody' on SIGHUP
        self.records_file.write_text(render_records(self.records))
        self.records_file.chmod(0o644)
        argv = dnsmasq_argv(self.ip, self.records_file, self.workdir / f"dns-{self.host}.pid")
        with open(self.log_file, "ab") as log:
            self.proc = self.tb.popen(self.host, argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "started" not in self.log():
            if self.proc.poll() is not None:
                raise DnsError(f"dnsmasq on {self.host} exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        if "started" not in self.log():
            raise DnsError(f"dnsmasq on {self.host} did not start within 5 s:\n{self.log()}")
        return self

    def serve(self, *hosts: str) -> None:
        """Point each host's /etc/resolv.conf at this server."""
        for h in hosts:
            self.tb.set_resolver(h, self.ip)

    def set_records(self, records: Mapping[str, str]) -> None:
        """Replace the records; dnsmasq rereads them on SIGHUP (and clears its cache)."""
        self.records_file.write_text(render_records(records))
        self.records = dict(records)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def resolve(self, from_host: str, name: str, timeout_s: float = 5.0) -> list[str]:
        """IPv4 addresses of ``name`` as ``from_host``'s resolver sees them (``getent
        ahostsv4``); retries until answered or ``timeout_s``; [] if never answered."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.tb.host(from_host).cmd(f"getent ahostsv4 {shlex.quote(name)}")
            ips = sorted({line.split()[0] for line in out.splitlines() if "STREAM" in line})
            if ips or time.monotonic() > deadline:
                return ips
            time.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
