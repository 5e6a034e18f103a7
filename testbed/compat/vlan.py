"""802.1Q VLAN interfaces in userspace, for a kernel without the ``8021q`` module.

Mininet material makes VLAN interfaces by hand: ``vconfig add h1-eth0 100`` (Mininet's
vlanhost example) or ``ip link add link h1-eth0 name h1-eth0.100 type vlan id 100``. Without
8021q the kernel refuses both ("Unknown device type"). Under ``minimesh mn`` / ``minimesh
mininet`` on such a kernel the shim's ``vconfig`` and ``ip`` hand those commands here, and
the same interface is made in userspace:

- a TAP device named as the kernel would name it (``h1-eth0.100``), with its parent's MAC
  and MTU, in the parent's network namespace;
- one process per VLAN interface (``python -m testbed.compat.vlan serve PARENT VID NAME
  JOURNAL RUN``) that tags what the TAP sends (TPID 0x8100, the VID, priority 0) and sends it on
  the parent through a packet socket, and hands the parent's frames of that VID, untagged,
  to the TAP. Untagged frames and other VIDs are not the VLAN interface's, as with the
  kernel's: hosts on different VLANs of one bridge do not reach each other.

It lives as long as its parent (a kernel VLAN device is deleted with its parent) and its
TAP (``ip link del NAME`` / ``vconfig rem NAME`` delete it). The process is recorded before it creates
anything, in a journal whose runner is the Mininet process that runs the hosts (the nearest
Python among the command's ancestors: it started the host's shell), so ``minimesh clean``
removes it if that process is killed.

Written by hand: no maintained library makes a VLAN interface without the kernel's module,
and the relay is a short loop of TAP and packet-socket reads.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from testbed.journal import Journal
from testbed.links.tap import open_tap, set_admin_up, set_mac

__all__ = ["tag", "untag", "vlan_name", "parse_ip_link_add", "main"]

ETH_P_ALL = 0x0003
TPID = 0x8100
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("IIIHHHH")   # struct tpacket_auxdata
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
NAME_TYPE_FILE = Path("/run/network/vlan/name-type")    # where Debian's vconfig keeps set_name_type
REAL_VCONFIG = "/usr/sbin/vconfig"
REAL_IP = next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.access(p, os.X_OK)), "ip")
NO_MODULE = "the kernel has no 8021q module"


class VlanError(Exception):
    """A refused command; the message says what is allowed."""


# --- frames ---------------------------------------------------------------------------------

def tag(frame: bytes, vid: int) -> bytes:
    """The frame with an 802.1Q tag for ``vid`` (priority 0) after the MAC addresses."""
    return frame[:12] + struct.pack("!HH", TPID, vid) + frame[12:]


def untag(frame: bytes, vid: int, aux: tuple[int, int, int] | None) -> bytes | None:
    """The frame without its tag if it belongs to VLAN ``vid``, else None. ``aux`` is the
    packet socket's (status, tci, tpid): the kernel moves a received tag out of the frame
    into that metadata; a frame may also still carry it inline."""
    if aux is not None and aux[0] & TP_STATUS_VLAN_VALID:
        tpid = aux[2] if aux[0] & TP_STATUS_VLAN_TPID_VALID else TPID
        return frame if tpid == TPID and aux[1] & 0x0FFF == vid else None
    if len(frame) >= 18 and frame[12:14] == b"\x81\x00" and \
            int.from_bytes(frame[14:16], "big") & 0x0FFF == vid:
        return frame[:12] + frame[16:]
    return None


def _aux(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = AUXDATA.unpack_from(data)
            return status, tci, tpid
    return None


# --- names and commands -----------------------------------------------------------------------

def _vid(text: str) -> int:
    try:
        vid = int(text)
    except ValueError:
        vid = -1
    if not 1 <= vid <= 4094:
        raise VlanError(f"VLAN id {text!r}: a number from 1 to 4094")
    return vid


def vlan_name(parent: str, vid: int, name_type: str = "DEV_PLUS_VID_NO_PAD") -> str:
    """The name vconfig gives (its name types; Debian's default DEV_PLUS_VID_NO_PAD)."""
    names = {"VLAN_PLUS_VID": f"vlan{vid:04d}", "VLAN_PLUS_VID_NO_PAD": f"vlan{vid}",
             "DEV_PLUS_VID": f"{parent}.{vid:04d}", "DEV_PLUS_VID_NO_PAD": f"{parent}.{vid}"}
    if name_type not in names:
        raise VlanError(f"vconfig name type {name_type!r}: one of {', '.join(names)}")
    return names[name_type]


def parse_ip_link_add(args: list[str]) -> tuple[str, int, str]:
    """(parent, vid, name) of ``ip link add [link] PARENT [name] NAME type vlan id VID
    [protocol 802.1Q]`` (the words after ``ip link add``, in any order ip takes them)."""
    parent = name = None
    vid = None
    i = 0
    while i < len(args):
        word = args[i]
        if word not in ("link", "dev", "name", "type", "id", "protocol"):
            if name is not None or word.startswith("-"):
                raise VlanError(f"ip link add ... type vlan: {word!r} is not supported by minimesh's userspace "
                                f"VLAN ({NO_MODULE}); it takes link, name, id and protocol 802.1Q")
            name, i = word, i + 1
            continue
        if i + 1 >= len(args):
            raise VlanError(f"ip link add: {word!r} needs a value")
        value = args[i + 1]
        i += 2
        if word == "link":
            parent = value
        elif word in ("name", "dev"):
            name = value
        elif word == "type":
            if value != "vlan":
                raise VlanError(f"ip link add: type {value!r}: minimesh's userspace VLAN makes type vlan only")
        elif word == "id":
            vid = _vid(value)
        elif value.lower() not in ("802.1q", "0x8100"):
            raise VlanError(f"ip link add: protocol {value!r}: minimesh's userspace VLAN speaks 802.1Q only")
    if parent is None or vid is None or name is None:
        raise VlanError("ip link add ... type vlan needs link PARENT, a name and id VID "
                        "(ip link add link eth0 name eth0.10 type vlan id 10)")
    return parent, vid, name


# --- the relay --------------------------------------------------------------------------------

def _mtu(name: str, value: int | None = None) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if value is not None:
            fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si20x", name.encode(), value))
        return struct.unpack_from("16si", fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16si20x", name.encode(), 0)))[1]


def serve(parent: str, vid: int, name: str, journal: str) -> int:
    """The VLAN interface's process: waits for the word go on stdin (its journal entry is
    written), creates the TAP, says ``ready`` (or ``error: ...``) on stdout, then relays."""
    if sys.stdin.readline().strip() != "go":
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.bind((parent, ETH_P_ALL))      # Python puts it in network order
            index = socket.if_nametoindex(parent)
            mac = ":".join(f"{b:02x}" for b in sock.getsockname()[4])
            tap = open_tap(name, None, offload=False, vnet_hdr=False)
            set_mac(tap, mac)
            _mtu(name, _mtu(parent))
            set_admin_up(tap, True)
            sock.setblocking(False)
        except OSError as e:
            print(f"error: {e}", flush=True)
            return 1
        print("ready", flush=True)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        _relay(sock, tap.fd, index, vid)
        return 0
    finally:
        try:
            os.unlink(journal)
        except OSError:
            pass


def _relay(sock: socket.socket, tap: int, index: int, vid: int) -> None:
    poll = select.poll()
    poll.register(tap, select.POLLIN)
    poll.register(sock, select.POLLIN)
    space = socket.CMSG_SPACE(AUXDATA.size)
    while True:
        if not poll.poll(1000):
            try:
                socket.if_indextoname(index)
            except OSError:
                return                            # the parent is gone: so is its VLAN
            continue
        while True:                               # the TAP: what the host sends on the VLAN
            try:
                frame = os.read(tap, 65536)
            except BlockingIOError:
                break
            except OSError:
                return                            # the VLAN interface was deleted (ip link del)
            try:
                sock.send(tag(frame, vid))
            except OSError:
                pass                              # parent down or gone: dropped, as a wire would
        while True:                               # the parent: what arrives for the VLAN
            try:
                data, anc, _flags, addr = sock.recvmsg(65536, space)
            except BlockingIOError:
                break
            except OSError:
                try:
                    socket.if_indextoname(index)
                except OSError:
                    return
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            mine = untag(data, vid, _aux(anc))
            if mine is not None:
                try:
                    os.write(tap, mine)
                except OSError:
                    pass                          # the VLAN interface is down


# --- the front end: vconfig and ip link -------------------------------------------------------

def run_owner() -> int | None:
    """The Mininet process this command runs for: the nearest ancestor running this Python
    (a host's shell is started by it; the shell runs vconfig or ip)."""
    python = os.path.realpath(sys.executable)
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            return None
        try:
            if os.readlink(f"/proc/{pid}/exe") == python:
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def _announce_to_run(run: int | None, message: str) -> None:
    """Tell the run's Mininet process of the substitution, once per run: this command's own
    stderr goes to a host's ``cmd`` output, which scripts seldom show. Said when the VLAN
    process just started is the run's only one (in any of its hosts)."""
    if run is None:
        return
    mine = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"testbed.compat.vlan" in argv and b"serve" in argv and argv[-2:] == [str(run).encode(), b""]:
                mine += 1
    if mine == 1:
        try:
            with open(f"/proc/{run}/fd/2", "w") as err:
                err.write(f"*** minimesh: {message}\n")
        except OSError:
            pass


def add(parent: str, vid: int, name: str) -> None:
    if len(name.encode()) > 15:
        raise VlanError(f"interface name {name!r} is longer than 15 bytes")
    try:
        socket.if_nametoindex(parent)
    except OSError:
        raise VlanError(f"{parent}: no such interface") from None
    try:
        socket.if_nametoindex(name)
        raise VlanError(f"{name}: an interface of that name exists")
    except OSError:
        pass
    run = run_owner()
    journal = Journal(runner=run)
    # its own session: a host's Ctrl-C (Mininet's sendInt) or SIGHUP is not the VLAN's end
    argv = [sys.executable, "-m", "testbed.compat.vlan", "serve", parent, str(vid), name, str(journal.path),
            str(run or 0)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, close_fds=True,
                             start_new_session=True)
    assert child.stdin is not None and child.stdout is not None
    journal.record_process(child.pid, what=f"userspace VLAN {name}")
    journal.close(delete=False)
    child.stdin.write("go\n")
    child.stdin.flush()
    answer = child.stdout.readline().strip()
    if answer != "ready":
        child.wait()
        Path(journal.path).unlink(missing_ok=True)
        raise VlanError(f"cannot make {name}: {answer.removeprefix('error: ') or 'its process exited'}")
    message = (f"VLAN {name} (id {vid} on {parent}) -> minimesh's userspace 802.1Q interface ({NO_MODULE}: "
               "a TAP and a tagging process)")
    print(f"*** minimesh: {message}", file=sys.stderr)
    _announce_to_run(run, message)


def vconfig(args: list[str]) -> int:
    if args and args[0] == "add" and len(args) == 3:
        name_type = NAME_TYPE_FILE.read_text().strip() if NAME_TYPE_FILE.exists() else "DEV_PLUS_VID_NO_PAD"
        vid = _vid(args[2])
        add(args[1], vid, vlan_name(args[1], vid, name_type))
        return 0
    if args and args[0] == "rem" and len(args) == 2:      # its process ends with its TAP
        return subprocess.run([REAL_IP, "link", "del", args[1]]).returncode
    if args and args[0] == "set_name_type" and os.path.exists(REAL_VCONFIG):
        os.execv(REAL_VCONFIG, [REAL_VCONFIG, *args])     # only writes a file: Debian's does it
    raise VlanError(f"vconfig {' '.join(args)}: minimesh's userspace VLAN ({NO_MODULE}) takes "
                    "add IFACE VID, rem NAME and set_name_type TYPE (no flags or priority maps)")


def ip(args: list[str]) -> int:
    """``ip link add ... type vlan ...`` (the words after ``ip``)."""
    words = args[2:] if len(args) >= 2 and "link".startswith(args[0]) and "add".startswith(args[1]) else args
    parent, vid, name = parse_ip_link_add(words)
    add(parent, vid, name)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "serve" and len(args) == 5:
            return serve(args[0], _vid(args[1]), args[2], args[3])
        if command == "vconfig":
            return vconfig(args)
        if command == "ip":
            return ip(args)
        raise VlanError("usage: python -m testbed.compat.vlan vconfig|ip ARGS (run by the shim's vconfig and ip)")
    except VlanError as e:
        print(f"minimesh: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
