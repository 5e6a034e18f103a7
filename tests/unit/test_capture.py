"""Capture post-processing without a network: fault comments placed on the right frame,
the name resolution block, and the whole editcap/tshark round trip on a pcapng written here
(skipped without tshark/editcap)."""
from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

import pytest

from testbed.run.capture import (Capture, CaptureFile, comment_plan, event_comments, fault_comments, hosts_text,
                             insert_nrb, nrb_block)
from testbed.history import Event, FaultRecord


def test_comment_goes_on_first_frame_at_or_after_its_time():
    frames = [10.0, 10.5, 11.0, 12.0, 12.5]
    plan = comment_plan(frames, [(10.5, "a"), (10.6, "b"), (10.7, "c"), (9.0, "early"), (13.0, "late")])
    # one comment per frame: "b" and "c" both belong on frame 3; "c" moves to the next free one
    assert plan == {2: "a", 3: "b", 4: "c", 1: "early", 5: "late (after the last packet)"}
    # after the last packet with the last frame taken: the last free frame before it
    assert comment_plan([1.0, 2.0], [(1.5, "x"), (3.0, "y")]) == {2: "x", 1: "y (after the last packet)"}
    assert comment_plan([1.0], [(1.0, "x"), (1.0, "y")]) == {1: "x | y"}     # one frame: joined
    assert comment_plan([], [(1.0, "x")]) == {}


def test_fault_comments_use_wall_time_and_say_what_happened():
    recs = [FaultRecord(5.0, 5.1, 0, "apply", {"kind": "link"}, description="link a-b delay=50ms"),
            FaultRecord(9.0, 9.2, 0, "revert", {"kind": "link"}, ok=False, error="boom")]
    out = fault_comments(reversed(recs), wall0=1000.0)
    assert [t for t, _ in out] == [1005.0, 1009.0]
    assert "fault #0 apply at t=5.000s: link a-b delay=50ms" in out[0][1]
    assert out[1][1].endswith("link FAILED: boom")


def test_event_comments_name_the_milestone_and_its_plain_details():
    evs = [Event(7.25, "experiment", "workload_started", {"host": "c0", "rate": 60, "opts": {"x": 1}}),
           Event(2.0, "experiment", "rules_applied", {})]
    out = event_comments(evs, wall0=100.0)
    assert out == [(102.0, "minimesh event at t=2.000s: rules_applied"),
                   (107.25, "minimesh event at t=7.250s: workload_started (host=c0, rate=60)")]


def test_nrb_block_layout():
    b = nrb_block({"10.0.0.1": "client one"})
    btype, total = struct.unpack("<II", b[:8])
    assert btype == 4 and total == len(b) and total % 4 == 0 and struct.unpack("<I", b[-4:])[0] == total
    rtype, rlen = struct.unpack("<HH", b[8:12])
    assert rtype == 1 and b[12:16] == bytes([10, 0, 0, 1]) and b[16:16 + rlen - 4] == b"client_one\0"
    assert hosts_text({"10.0.0.2": "b", "10.0.0.1": "a x"}) == "10.0.0.1 a_x\n10.0.0.2 b\n"


def _pcapng(frames: list[tuple[float, bytes]]) -> bytes:
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body + struct.pack("<I", 12 + len(shb_body))
    idb_body = struct.pack("<HHI", 1, 0, 65535)
    idb = struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    out = shb + idb
    for t, pkt in frames:
        us = int(t * 1e6)
        data = pkt + b"\0" * (-len(pkt) % 4)
        body = struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(pkt), len(pkt)) + data
        out += struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    return out


def _udp_frame(src: bytes, dst: bytes) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, src, dst)
    return eth + ip + struct.pack("!HHHH", 1000, 2000, 8, 0)


def test_insert_nrb_keeps_packets_and_replaces_an_old_block():
    data = _pcapng([(1.0, _udp_frame(b"\x0a\0\0\x01", b"\x0a\0\0\x02"))])
    once = insert_nrb(data, {"10.0.0.1": "a"})
    twice = insert_nrb(once, {"10.0.0.1": "b"})
    assert len(twice) == len(once) and b"b\0" in twice and b"a\0\0\0" not in twice[len(data) - 40:]
    with pytest.raises(ValueError):
        insert_nrb(b"\xd4\xc3\xb2\xa1" + b"\0" * 20, {})


@pytest.mark.skipif(not (shutil.which("tshark") and shutil.which("editcap")), reason="needs tshark and editcap")
def test_annotate_and_names_round_trip_through_wireshark_tools(tmp_path):
    path = tmp_path / "h1-eth0.pcapng"
    a, b = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    path.write_bytes(_pcapng([(1000.0 + i * 0.5, _udp_frame(a, b)) for i in range(10)]))

    @dataclass
    class FakeTb:
        host_names = ["h1"]

    cap = Capture(FakeTb(), tmp_path, hosts=[])
    cap.files = [CaptureFile("h1", "h1-eth0", path)]
    faults = [FaultRecord(1.2, 1.3, 0, "apply", {"kind": "partition"}, description="partition x"),
              FaultRecord(3.0, 3.1, 0, "revert", {"kind": "partition"}, description="partition x")]
    assert cap.annotate(faults, wall0=999.0) == {"h1-eth0.pcapng": 2}
    cap.write_names({"10.0.0.1": "client", "10.0.0.2": "server"})
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "frame.comment", "-T", "fields",
                          "-e", "frame.number", "-e", "frame.comment"], capture_output=True, text=True).stdout
    lines = out.strip().splitlines()
    # fault at wall 1000.2 -> first frame at/after it is #2 (1000.5); revert at 1002.0 -> #5
    assert [ln.split("\t")[0] for ln in lines] == ["2", "5"]
    assert "apply at t=1.200s: partition x" in lines[0]
    named = subprocess.run(["tshark", "-r", str(path), "-N", "n", "-T", "fields", "-e", "ip.src_host",
                            "-e", "ip.dst_host", "-c", "1"], capture_output=True, text=True).stdout
    assert named.split() == ["client", "server"]
    assert (tmp_path / "hosts").read_text() == "10.0.0.1 client\n10.0.0.2 server\n"


def test_keylogs_merged_and_decode_as_lines(tmp_path):
    from testbed.run.capture import decode_as, merge_keylogs, viewer_lines
    d = tmp_path / "keys"
    d.mkdir()
    (d / "a.keys").write_text("# comment\nCLIENT_TRAFFIC_SECRET_0 aa bb\n")
    (d / "b.keys").write_text("SERVER_TRAFFIC_SECRET_0 cc dd\n\n")
    (d / "c.txt").write_text("not a key log\n")
    out = tmp_path / "all.log"
    assert merge_keylogs(d, out) == 2
    assert out.read_text() == "CLIENT_TRAFFIC_SECRET_0 aa bb\nSERVER_TRAFFIC_SECRET_0 cc dd\n"
    assert merge_keylogs(tmp_path / "none", tmp_path / "x.log") == 0 and not (tmp_path / "x.log").exists()
    assert decode_as([9080, 8080, 9080], tls=True) == ["tcp.port==8080,tls", "tcp.port==9080,tls"]
    assert decode_as([9080], tls=False) == ["tcp.port==9080,http"]
    f = tmp_path / "h1-eth0.pcapng"
    assert viewer_lines([f], [9080], True) == [
        f"  tshark -r {f} -N n -d tcp.port==9080,tls -Y http", f"  wireshark -d tcp.port==9080,tls {f}"]
    assert viewer_lines([], [9080], True) == []


def test_up_capture_turns_key_logs_on_for_a_mesh_with_citadel(tmp_path):
    from pathlib import Path

    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.cli.up import KEYLOG_DIR, with_capture_keylogs
    from testbed.topology.load import load_topology
    repo = Path(__file__).resolve().parents[2]
    topo = load_topology(str(repo / "topologies/bookinfo.yaml"))
    assert with_capture_keylogs(topo, None) is topo
    sec = with_capture_keylogs(topo, str(tmp_path / "cap")).sections["mesh"].security
    assert sec.keylog and sec.keylog_dir == str(tmp_path / "cap" / KEYLOG_DIR) and sec.citadel
    assert topo.sections["mesh"].security.keylog is False          # the original is unchanged
