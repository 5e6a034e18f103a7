"""Frame helpers (vnet header), netem parameter translation, the fake backend, backend
selection errors. No root needed."""
import random
import struct

import pytest

from testbed.links import BackendUnavailable, FakeBackend, select_backend
from testbed.links import frames as F
from testbed.links.netem import netem_options
from testbed.shape import LinkShape
from tests.support.mininet_nodes import FakeNode

scapy = pytest.importorskip("scapy.all")


def _udp_frame(payload=b"x" * 100):
    pkt = scapy.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / \
        scapy.IP(src="10.0.0.1", dst="10.0.0.2") / scapy.UDP(sport=1234, dport=5678) / payload
    return bytes(pkt)


def _pseudo_sum(frame):
    ip = frame[14:34]
    udp_len = len(frame) - 34
    words = ip[12:20] + struct.pack("!BBH", 0, 17, udp_len)
    s = sum(struct.unpack("!6H", words))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _partial(frame):
    """The frame as a TAP with TUN_F_CSUM hands it over: checksum field = pseudo-header sum."""
    raw = bytearray(frame)
    struct.pack_into("!H", raw, 34 + 6, _pseudo_sum(frame))
    hdr = F._VNET.pack(F.NEEDS_CSUM, F.GSO_NONE, 0, 0, 34, 6)
    return hdr + bytes(raw)


def test_complete_checksum_matches_a_real_stack():
    frame = _udp_frame()
    done = F.complete_checksum(_partial(frame))
    assert done[F.VNET_HDR_LEN:] == frame
    assert done[0] & F.NEEDS_CSUM == 0


def test_corrupt_finishes_checksum_then_flips_one_bit():
    frame = _udp_frame(b"y" * 33)  # odd length
    out = F.corrupt(_partial(frame), random.Random(1))
    body = out[F.VNET_HDR_LEN:]
    assert sum(bin(a ^ b).count("1") for a, b in zip(body, frame, strict=True)) == 1
    assert out[0] == 0  # neither NEEDS_CSUM nor DATA_VALID: the receiver checks the checksum


def test_corrupt_clears_data_valid():
    hdr = F._VNET.pack(F.DATA_VALID, F.GSO_NONE, 0, 0, 0, 0)
    assert F.corrupt(hdr + _udp_frame(), random.Random(2))[0] == 0


def test_corrupt_drops_gso_superframes():
    hdr = F._VNET.pack(F.NEEDS_CSUM, 1, 66, 1448, 34, 16)
    assert F.corrupt(hdr + bytes(3000), random.Random(1)) is None


def test_wire_len_counts_headers_per_segment():
    eth_ip_tcp = bytearray(66)
    eth_ip_tcp[34 + 12] = 8 << 4  # TCP data offset: 32 bytes
    buf = F._VNET.pack(F.NEEDS_CSUM, 1, 66, 1448, 34, 16) + bytes(eth_ip_tcp) + bytes(1448 * 10)
    assert F.wire_len(buf) == 66 + 1448 * 10 + 9 * 66
    plain = F._VNET.pack(0, 0, 0, 0, 0, 0) + bytes(100)
    assert F.wire_len(plain) == 100


def test_netem_options_translation():
    shape = LinkShape(delay_ms=10, jitter_ms=2.5, loss_pct=1.5, loss_corr_pct=25,
                      duplicate_pct=1, reorder_pct=5, corrupt_pct=0.1, bw_mbit=20, queue_pkts=100)
    assert netem_options(shape) == {
        "delay": 10000, "jitter": 2500, "limit": 100, "loss": 1.5, "loss_corr": 25,
        "duplicate": 1, "prob_reorder": 5, "prob_corrupt": 0.1, "rate": 2_500_000}


def test_netem_options_defaults_and_limits():
    assert netem_options(LinkShape()) == {"delay": 0, "jitter": 0, "limit": 1000,
                                          "loss": 0.0, "duplicate": 0.0}
    # correlation without loss would make pyroute2 refuse: it is left out
    assert "loss_corr" not in netem_options(LinkShape(loss_corr_pct=50))
    with pytest.raises(ValueError, match="32-bit rate"):
        netem_options(LinkShape(bw_mbit=40000))


def test_netem_options_pass_pyroute2_validation():
    from pyroute2.netlink.rtnl.tcmsg import sched_netem
    opts = sched_netem.get_parameters(netem_options(LinkShape(delay_ms=5, loss_pct=2, loss_corr_pct=10,
                                                              reorder_pct=3, bw_mbit=10)))
    attrs = dict((k, v) for k, v in opts["attrs"])
    assert opts["gap"] == 1 and opts["limit"] == 1000
    assert attrs["TCA_NETEM_RATE"]["rate"] == 1_250_000
    assert attrs["TCA_NETEM_REORDER"]["prob_reorder"] == int((2**32 - 1) * 3 / 100)


def test_netem_request_with_a_rate_encodes_and_decodes():
    # the bw crash: IPRoute.tc("replace", "netem", ..., rate=N) also made N the tcmsg's
    # TCA_RATE (a byte string) and died in the encoder; the request carries it only in netem's
    # options. Encoding is where it crashed, so encode and read it back.
    from pyroute2.netlink.rtnl.tcmsg import tcmsg
    from pyroute2.netlink.rtnl.tcmsg.common import time2tick  # µs -> the kernel's psched ticks

    from testbed.links.netem import netem_request
    msg = netem_request(7, LinkShape(delay_ms=5, jitter_ms=1, bw_mbit=10, queue_pkts=50))
    msg.encode()
    back = tcmsg(msg.data)
    back.decode()
    assert back["index"] == 7 and back["handle"] == 0x10000 and back["parent"] == 0xFFFFFFFF
    assert back.get_attr("TCA_KIND") == "netem"
    assert back.get_attr("TCA_RATE") is None
    opts = back.get_attr("TCA_OPTIONS")
    assert (opts["delay"], opts["jitter"], opts["limit"]) == (time2tick(5000), time2tick(1000), 50)
    assert opts.get_attr("TCA_NETEM_RATE")["rate"] == 1_250_000


def test_fake_backend_records_shapes_and_state():
    backend = select_backend("fake")
    assert isinstance(backend, FakeBackend) and backend.reason
    a, b = FakeNode("h1"), FakeNode("s1")
    link = backend.link_class(a, b, shape1=LinkShape(delay_ms=5))
    assert str(link) == "h1-eth0<->s1-eth0"
    assert link.get_shapes() == (LinkShape(delay_ms=5), LinkShape())
    link.set_shapes(backward=LinkShape(loss_pct=1))
    assert link.get_shapes() == (LinkShape(delay_ms=5), LinkShape(loss_pct=1))
    link.set_up(False)
    assert not link.is_up() and not link.intf1.up
    assert [h[0] for h in link.history] == ["create", "set_shapes", "set_up"]
    link.stop()
    assert a.intfs == {} and b.intfs == {}


def test_unknown_backend_name_lists_allowed():
    with pytest.raises(ValueError, match="auto, netem, userspace, fake"):
        select_backend("tc")


def test_backend_unavailable_is_a_runtime_error():
    assert issubclass(BackendUnavailable, RuntimeError)
