"""STRICT mTLS on the wire: tshark sees only TLS; with the NSS key log it decrypts to the
HTTP request (and shows the SPIFFE IDs of the encrypted TLS 1.3 certificates); a pcapng with
the secrets embedded by `editcap --inject-secrets` decrypts without the key log."""
from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_mtls import REVIEWS, http_get, material, serve
from testbed.mesh.citadel.ca import CertificateAuthority
from proxy.tls.context import MeshTLS
from proxy.tls.sockets import open_mtls_stream

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (shutil.which("tshark") and shutil.which("editcap")),
                                 reason="tshark/editcap not installed")]


def tshark_read(pcap: Path, display_filter: str, *opts: str, fields: str = "") -> list[str]:
    cmd = ["tshark", "-r", str(pcap), *opts, "-Y", display_filter]
    if fields:
        cmd += ["-T", "fields", "-e", fields]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def start_capture(port: int, pcap: Path) -> subprocess.Popen:
    """tshark on lo for one port; returns once the capture has really started."""
    p = subprocess.Popen(["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap)],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = p.stderr.readline()  # type: ignore[union-attr]  (stderr=PIPE)
        if not line:
            break
        if b"Capture started" in line:  # "Capturing on 'lo'" comes before the filter is live
            time.sleep(0.3)
            return p
    p.kill()
    p.wait()
    raise RuntimeError("tshark did not start capturing")


def stop_capture(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)  # flushes the pcapng
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_strict_mtls_capture_decrypts_with_keylog(tmp_path):
    ca = CertificateAuthority()
    keylog, pcap, embedded = (tmp_path / "keys.log", tmp_path / "mtls.pcapng",
                              tmp_path / "mtls-dsb.pcapng")

    async def main() -> tuple[int, bytes]:
        srv_tls = MeshTLS(material(ca, "reviews"), keylog_filename=str(keylog))
        srv, port = await serve(srv_tls)
        cap = None
        try:
            cap = await asyncio.get_running_loop().run_in_executor(None, start_capture, port,
                                                                   pcap)
            r, w, _ = await open_mtls_stream("127.0.0.1", port,
                                             MeshTLS(material(ca, "productpage")), REVIEWS)
            got = await http_get(r, w, "/reviews/secret-path-42")
            w.close()
            await asyncio.sleep(0.5)
            return got
        finally:
            if cap is not None:
                stop_capture(cap)
            srv.close()
            await srv.wait_closed()

    status, _ = asyncio.run(asyncio.wait_for(main(), 60))
    assert status == 200
    # on the wire: TLS 1.3 only, no readable HTTP
    assert tshark_read(pcap, "tls.handshake.type == 1")  # a ClientHello
    assert tshark_read(pcap, "tls.app_data")  # encrypted application data records
    assert tshark_read(pcap, "http.request") == []
    raw = pcap.read_bytes()
    assert b"secret-path-42" not in raw and b"GET /" not in raw
    # with the key log: the HTTP request, and the (encrypted in 1.3) certificates' SPIFFE IDs
    kl = f"tls.keylog_file:{keylog}"
    assert tshark_read(pcap, "http.request", "-o", kl, fields="http.request.uri") == \
        ["/reviews/secret-path-42"]
    sans = {s for ln in tshark_read(pcap, "x509ce.uniformResourceIdentifier", "-o", kl,
                                    fields="x509ce.uniformResourceIdentifier")
            for s in ln.split(",")}
    assert sans == {REVIEWS, "spiffe://cluster.local/ns/default/sa/productpage"}
    # secrets embedded into the pcapng: decrypts with no key log option
    subprocess.run(["editcap", "--inject-secrets", f"tls,{keylog}", str(pcap), str(embedded)],
                   check=True, timeout=60)
    assert tshark_read(embedded, "http.request", fields="http.request.uri") == \
        ["/reviews/secret-path-42"]
