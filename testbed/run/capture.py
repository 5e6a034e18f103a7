"""Packet captures of a run: one pcapng per host interface, fault comments, names.

    cap = Capture(tb, Path("out/pcap")).start()          # tcpdump in each host's namespace
    ...                                                  # the run
    cap.stop()                                           # SIGINT: tcpdump writes its last block
    cap.annotate(faults, wall0)                          # fault ops -> packet comments
    cap.write_names({"10.0.0.1": "client"})              # last (editcap drops NRBs): names

``tcpdump -w FILE --immediate-mode -U`` runs through ``tb.popen`` (journaled: killed if the
runner dies); each file is complete, and converted to pcapng (``editcap -F pcapng``), after
:meth:`stop`. :meth:`annotate` puts each fault
operation as a comment on the first frame at or after its time (``editcap -a N:comment``),
so ``tshark -r FILE -Y frame.comment`` lists them. :meth:`write_names` embeds a name
resolution block (pcapng NRB; ``tshark -N n`` and Wireshark show the names) and leaves
``hosts`` next to the captures (the format of Wireshark's ``hosts`` file, usable as
``wireshark -H``/profile file).
:meth:`inject_secrets` embeds a TLS key log (``editcap --inject-secrets tls,KEYLOG``).

The pure part, :func:`comment_plan`, maps fault times to frame numbers.
"""
from __future__ import annotations

import bisect
import ipaddress
import os
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from testbed.paths import hand_over, user_dir

if TYPE_CHECKING:
    from testbed.net.running import RunningTestbed

__all__ = ["Capture", "CaptureFile", "comment_plan", "fault_comments", "frame_times", "hosts_text",
           "nrb_block", "insert_nrb", "merge_keylogs", "decode_as", "viewer_lines"]


@dataclass(frozen=True)
class CaptureFile:
    host: str
    interface: str
    path: Path


def fault_comments(faults: Iterable[Any], wall0: float) -> list[tuple[float, str]]:
    """(wall-clock time, comment) per fault op record (apply/revert), in time order."""
    out = []
    for f in faults:
        what = f.description or str(f.fault.get("kind", "fault"))
        status = "" if f.ok else f" FAILED: {f.error}"
        out.append((wall0 + f.t_start, f"minimesh fault #{f.fault_id} {f.phase} at t={f.t_start:.3f}s: {what}{status}"))
    return sorted(out)


def event_comments(events: Iterable[Any], wall0: float) -> list[tuple[float, str]]:
    """(wall-clock time, comment) per experiment milestone event (rules applied, workload
    started, ...: history events of source ``experiment``), in time order."""
    out = []
    for e in events:
        what = ", ".join(f"{k}={v}" for k, v in e.details.items() if not isinstance(v, (dict, list)))
        out.append((wall0 + e.t, f"minimesh event at t={e.t:.3f}s: {e.kind}" + (f" ({what})" if what else "")))
    return sorted(out)


def comment_plan(frame_epochs: Sequence[float], comments: Sequence[tuple[float, str]]) -> dict[int, str]:
    """Frame number (1-based) -> comment: each comment goes on the first frame whose time is
    at or after the comment's and that has no comment yet (one comment per frame, so
    ``-T fields -e frame.comment`` prints each on its own line; the comment's text carries
    its exact time); comments after the last frame go on the last frames (marked "(after the
    last packet)"); only when every frame has one are comments joined with " | "."""
    plan: dict[int, str] = {}
    if not frame_epochs:
        return plan
    for t, text in sorted(comments):
        i = bisect.bisect_left(frame_epochs, t)
        if i >= len(frame_epochs):
            i, text = len(frame_epochs) - 1, text + " (after the last packet)"
        n = i + 1
        while n in plan and n < len(frame_epochs):
            n += 1
        if n in plan:                              # every later frame taken: back to the first free one
            free = [k for k in range(i + 1, 0, -1) if k not in plan]
            n = free[0] if free else n
        plan[n] = f"{plan[n]} | {text}" if n in plan else text
    return plan


def frame_times(path: Path) -> list[float]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()]


def nrb_block(names: Mapping[str, str]) -> bytes:
    """A pcapng Name Resolution Block (little-endian) with one IPv4 record per address."""
    body = b""
    for ip, name in sorted(names.items()):
        value = ipaddress.IPv4Address(ip).packed + name.replace(" ", "_").encode() + b"\0"
        body += struct.pack("<HH", 1, len(value)) + value + b"\0" * (-len(value) % 4)
    body += struct.pack("<HH", 0, 0)
    total = 12 + len(body)
    return struct.pack("<II", 4, total) + body + struct.pack("<I", total)


def insert_nrb(data: bytes, names: Mapping[str, str]) -> bytes:
    """``data`` (a little-endian pcapng) with an NRB after the section's first interface
    blocks, before the first packet; an existing NRB is replaced."""
    if data[:4] != b"\x0a\x0d\x0d\x0a" or data[8:12] != b"\x4d\x3c\x2b\x1a":
        raise ValueError("not a little-endian pcapng file")
    i, head, rest = 0, b"", b""
    while i + 8 <= len(data):
        btype, length = struct.unpack("<II", data[i:i + 8])
        if btype not in (0x0A0D0D0A, 1, 4):
            break
        if btype != 4:
            head += data[i:i + length]
        i += length
    rest = data[i:]
    return head + nrb_block(names) + rest


def hosts_text(names: Mapping[str, str]) -> str:
    """Wireshark ``hosts`` format: ``address name`` per line (names without spaces)."""
    return "".join(f"{ip} {name.replace(' ', '_')}\n" for ip, name in sorted(names.items()))


def merge_keylogs(directory: Path, out: Path) -> int:
    """Concatenate every ``*.keys`` NSS key log under ``directory`` into ``out`` (one
    file ``editcap --inject-secrets`` takes); returns the number of secret lines."""
    lines: list[str] = []
    for f in sorted(directory.glob("*.keys")) if directory.is_dir() else []:
        lines += [ln for ln in f.read_text(errors="replace").splitlines() if ln and not ln.startswith("#")]
    if lines:
        out.write_text("\n".join(lines) + "\n")
        hand_over(out)
    return len(lines)


def decode_as(ports: Iterable[int], tls: bool) -> list[str]:
    """Wireshark's Decode As for the mesh's service ports (``-d tcp.port==P,tls|http``):
    sidecars talk on the services' own ports, which Wireshark does not map to TLS or HTTP by
    itself; inside TLS, ALPN http/1.1 then gives HTTP."""
    return [f"tcp.port=={p},{'tls' if tls else 'http'}" for p in sorted(set(ports))]


def viewer_lines(files: Sequence[Path], ports: Iterable[int], tls: bool) -> list[str]:
    """The tshark and Wireshark command lines printed at the end of ``up --capture``."""
    if not files:
        return []
    opts = "".join(f" -d {x}" for x in decode_as(ports, tls))
    f = str(files[0])
    return [f"  tshark -r {f} -N n{opts} -Y http", f"  wireshark{opts} {f}"]


class Capture:
    """tcpdump on every interface (except lo) of ``hosts`` (default: all hosts of ``tb``)."""

    def __init__(self, tb: RunningTestbed, directory: Path, hosts: Sequence[str] | None = None, snaplen: int = 0):
        self.tb, self.dir, self.snaplen = tb, Path(directory), snaplen
        self.hosts = list(hosts) if hosts is not None else list(tb.host_names)
        self.files: list[CaptureFile] = []
        self._procs: list[subprocess.Popen] = []

    def start(self, ready_timeout_s: float = 5.0) -> "Capture":
        if shutil.which("tcpdump") is None:
            raise RuntimeError("--capture needs tcpdump (apt install tcpdump)")
        user_dir(self.dir)
        logs = []
        for h in self.hosts:
            for intf in self.tb.host(h).intfNames():
                if intf == "lo":
                    continue
                path = self.dir / f"{intf}.pcapng"
                log = self.dir / f".{intf}.tcpdump.log"
                argv = ["tcpdump", "-i", intf, "-w", str(path), "--immediate-mode", "-U", "-n",
                        "-s", str(self.snaplen), "-Z", "root", "--time-stamp-precision", "micro"]
                with open(log, "wb") as lf:
                    self._procs.append(self.tb.popen(h, argv, stdout=lf, stderr=subprocess.STDOUT))
                self.files.append(CaptureFile(h, intf, path))
                logs.append(log)
        deadline = time.monotonic() + ready_timeout_s
        for log, proc in zip(logs, self._procs, strict=False):
            while b"listening on" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tcpdump did not start: {log.read_text(errors='replace')[-300:]}")
                time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGINT each tcpdump (it then writes its buffered packets and closes the file)."""
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self._procs:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs = []
        for f in self.dir.glob(".*.tcpdump.log"):
            f.unlink()
        for cf in self.files:      # tcpdump writes pcap: make every file the pcapng its name says
            if cf.path.exists() and cf.path.stat().st_size > 0 and cf.path.read_bytes()[:4] != b"\x0a\x0d\x0d\x0a":
                self._rewrite(cf.path, ["editcap", "-F", "pcapng"])
            hand_over(cf.path)        # tcpdump -Z root wrote it: the sudo user's, readable

    def _rewrite(self, path: Path, argv: list[str]) -> None:
        tmp = path.with_suffix(".tmp.pcapng")
        subprocess.run(argv + [str(path), str(tmp)] if argv[0] == "editcap" else argv + ["-w", str(tmp)],
                       check=True, capture_output=True)
        os.replace(tmp, path)
        hand_over(path)

    def annotate(self, faults: Iterable[Any], wall0: float, events: Iterable[Any] = ()) -> dict[str, int]:
        """Fault ops (and milestone ``events``, see :func:`event_comments`) as packet comments
        in every capture; returns file name -> comments added."""
        comments = sorted(fault_comments(faults, wall0) + event_comments(events, wall0))
        added: dict[str, int] = {}
        for f in self.files:
            if not comments or not f.path.exists() or f.path.stat().st_size == 0:
                continue
            plan = comment_plan(frame_times(f.path), comments)
            if not plan:
                continue
            argv = ["editcap"]
            for n, text in sorted(plan.items()):
                argv += ["-a", f"{n}:{text}"]
            self._rewrite(f.path, argv)
            added[f.path.name] = len(plan)
        return added

    def write_names(self, names: Mapping[str, str]) -> Path:
        """``hosts`` file under the capture dir, and a name resolution block in each file."""
        hosts = self.dir / "hosts"
        hosts.write_text(hosts_text(names))
        for f in self.files:
            if f.path.exists() and f.path.stat().st_size > 0:
                tmp = f.path.with_suffix(".tmp.pcapng")
                tmp.write_bytes(insert_nrb(f.path.read_bytes(), names))
                os.replace(tmp, f.path)
                hand_over(f.path)
        return hand_over(hosts)

    def inject_secrets(self, keylog: Path) -> int:
        """Embed a TLS key log in every capture (Wireshark then decrypts without settings)."""
        n = 0
        if not keylog.exists() or keylog.stat().st_size == 0:
            return n
        for f in self.files:
            if f.path.exists() and f.path.stat().st_size > 0:
                self._rewrite(f.path, ["editcap", "--inject-secrets", f"tls,{keylog}"])
                n += 1
        return n
