"""Frames as the userspace emulator reads them from a TAP opened with IFF_VNET_HDR.

Each buffer is a 10-byte ``virtio_net_hdr`` followed by the Ethernet frame. The header
says whether the kernel left the L4 checksum to be filled in (``NEEDS_CSUM``) and
whether the frame is a GSO super-frame (TCP segmentation done later by the receiver's
kernel). Two things in the link model must look inside:

- rate limiting counts bytes on the wire, like netem's ``qdisc_pkt_len``: a GSO
  super-frame of N segments carries its headers N times (:func:`wire_len`);
- corruption must hit a frame whose checksum is final, like netem's
  ``skb_checksum_help`` before flipping a bit (:func:`corrupt`).

Pure functions of bytes; no I/O.
"""
from __future__ import annotations

import array
import random
import struct

VNET_HDR_LEN = 10
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_UDP_L4 = 5


def wire_len(buf: bytes) -> int:
    """Bytes this buffer occupies on the wire (Ethernet frame, no FCS), counting a
    GSO super-frame's headers once per segment."""
    n = len(buf) - VNET_HDR_LEN
    if buf[1] == GSO_NONE:  # gso_type
        return n
    _flags, gso_type, _hl, gso_size, csum_start, _co = _VNET.unpack_from(buf)
    if gso_size == 0 or csum_start == 0:
        return n
    l4 = VNET_HDR_LEN + csum_start
    if gso_type == GSO_UDP_L4:
        hdr = csum_start + 8
    else:
        hdr = csum_start + ((buf[l4 + 12] >> 4) * 4 if l4 + 12 < len(buf) else 20)
    payload = n - hdr
    if payload <= gso_size:
        return n
    segs = -(-payload // gso_size)
    return n + (segs - 1) * hdr


def _fold_checksum(data: bytes | memoryview) -> int:
    """Internet checksum (ones' complement of the ones' complement sum) of data."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(array.array("H", bytes(data)))  # native order; the result is stored back native
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def complete_checksum(buf: bytes) -> bytes:
    """Fill in a ``NEEDS_CSUM`` frame's L4 checksum as the kernel would, clear the flag."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(buf)
    if not flags & NEEDS_CSUM:
        return buf
    out = bytearray(buf)
    start = VNET_HDR_LEN + csum_start
    where = start + csum_offset
    # the field holds the pseudo-header sum; summing over it completes the checksum
    csum = _fold_checksum(memoryview(out)[start:])
    struct.pack_into("=H", out, where, csum)
    _VNET.pack_into(out, 0, flags & ~NEEDS_CSUM, gso_type, hdr_len, gso_size, 0, 0)
    return bytes(out)


def flip_bit(frame: bytes, rng: random.Random, offset: int = 0) -> bytes:
    """Flip one random bit of ``frame[offset:]`` (netem: one random bit of the data)."""
    out = bytearray(frame)
    i = offset + rng.randrange(len(out) - offset)
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def corrupt(buf: bytes, rng: random.Random) -> bytes | None:
    """netem's corrupt on a vnet-header buffer: finish the checksum, then flip one bit of
    the Ethernet frame. A GSO super-frame cannot be finished without segmenting it, so it
    is dropped instead (returns None); the emulator switches TAP offloads off while a link
    has corruption configured, so only frames already in flight at that moment hit this."""
    if buf[1] != GSO_NONE:
        return None
    out = bytearray(flip_bit(complete_checksum(buf), rng, VNET_HDR_LEN))
    out[0] = 0  # no NEEDS_CSUM, and no DATA_VALID: the receiver must verify the checksum
    return bytes(out)


def plain_corrupt(frame: bytes, rng: random.Random) -> bytes | None:
    """Corrupt a frame that has no vnet header."""
    return flip_bit(frame, rng) if frame else frame
