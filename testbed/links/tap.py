"""TAP devices and interface flags through plain ioctls (no netlink library in the
emulator's hot process). Linux only.

:func:`open_tap` creates a TAP device *inside another network namespace* (given as a
``/proc/PID/ns/net`` path) by entering it for the duration of the ``TUNSETIFF`` ioctl:
the device is created in the caller's current namespace and stays there, while the
file descriptor keeps working from anywhere. A datagram socket opened at the same time
lets :func:`set_admin_up` flip the device's IFF_UP flag later.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
OFFLOADS_ON = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCSIFTXQLEN = 0x8943
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
# Frames the kernel holds for the emulator to read (the TAP's ring; tun's default is 500).
# A wire's buffer, like Linux's default txqueuelen: it only fills while the emulator is
# starved of CPU, and a deeper ring turns those short stalls into delay instead of drops.
TAP_QUEUE_FRAMES = 1000
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


@dataclass
class Tap:
    name: str
    fd: int
    ctl: socket.socket  # AF_INET datagram socket in the TAP's namespace, for flag ioctls

    def close(self) -> None:
        os.close(self.fd)
        self.ctl.close()


def open_tap(name: str, netns_path: str | None, offload: bool = True,
             queue_frames: int = TAP_QUEUE_FRAMES, vnet_hdr: bool = True) -> Tap:
    """Create TAP ``name`` in the namespace at ``netns_path`` (None: the current one).
    With ``vnet_hdr`` (the link emulator's way) each frame read or written carries a
    10-byte virtio-net header; without it, frames are plain Ethernet."""
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    entered = False
    try:
        if netns_path:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(target)
                entered = True
            finally:
                os.close(target)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0))
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError as e:
                raise OSError(e.errno, f"cannot create TAP {name!r} "
                                       f"(does an interface with that name exist?): {e.strerror}") from None
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
            set_offload(fd, offload and vnet_hdr)
            ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                set_queue_len(ctl, name.encode(), queue_frames)
            except BaseException:
                ctl.close()
                raise
        except BaseException:
            os.close(fd)
            raise
    finally:
        if entered:
            setns(home)
        os.close(home)
    return Tap(name, fd, ctl)


def set_mac(tap: Tap, mac: str) -> None:
    """Give the TAP the MAC Mininet chose for the interface (``addr1``/``addr2`` of a link,
    which a veth gets at creation): static ARP entries and ``intf.MAC()`` rely on it."""
    try:
        raw = bytes(int(part, 16) for part in mac.split(":"))
    except ValueError:
        raise ValueError(f"bad MAC address {mac!r} for {tap.name}") from None
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r} for {tap.name}")
    fcntl.ioctl(tap.ctl, SIOCSIFHWADDR, struct.pack("16sH6s16x", current_name(tap), ARPHRD_ETHER, raw))


def set_offload(fd: int, on: bool) -> None:
    """Let the kernel hand over (and accept) GSO super-frames with partial checksums."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS_ON if on else 0)


def set_queue_len(ctl: socket.socket, name: bytes, frames: int) -> None:
    """The TAP's txqueuelen, which is also the length of the ring the emulator reads."""
    fcntl.ioctl(ctl, SIOCSIFTXQLEN, struct.pack("16si20x", name, frames))


def current_name(tap: Tap) -> bytes:
    """The TAP's name now (someone may have renamed it since it was created)."""
    try:
        return fcntl.ioctl(tap.fd, TUNGETIFF, bytes(40))[:16].rstrip(b"\0")
    except OSError:
        return tap.name.encode()


def set_admin_up(tap: Tap, up: bool) -> None:
    name = current_name(tap)
    ifr = struct.pack("16sH22x", name, 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(tap.ctl, SIOCGIFFLAGS, ifr))[1]
    flags = flags | IFF_UP if up else flags & ~IFF_UP
    fcntl.ioctl(tap.ctl, SIOCSIFFLAGS, struct.pack("16sH22x", name, flags))
