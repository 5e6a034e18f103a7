"""Sidecar-to-sidecar STRICT mTLS on the wire, with minimesh-proxy sidecars wired through
Pilot and Citadel: the sidecars write their TLS secrets (node metadata KEYLOG, NSS key log
format); tshark sees only TLS between the sidecars, decrypts the request with the key log,
and `editcap --inject-secrets` gives a pcapng that decrypts on its own. tshark captures on
`lo` for the server sidecar's inbound port only."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_mesh_mtls import MtlsMesh, _is, peer_auth, run
from tests.integration.test_mtls_tshark import start_capture, stop_capture, tshark_read

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("tshark") and shutil.which("editcap")),
                                 reason="tshark/editcap not installed")]
SECRET = "/sidecar/secret-path-77"


async def _capture(tmp: Path) -> tuple[int, int]:
    pcap = tmp / "mtls.pcapng"
    async with MtlsMesh(tmp, keylog=True, clients=("sleep",), rules=peer_auth("STRICT")) as m:
        # no warm-up request: the capture must see the first handshake (rules were applied
        # before the sidecars started, and /ready means their xDS config is in place)
        await m.until(lambda: _is(m.plaintext(), 0), what="STRICT inbound")
        cap = await asyncio.get_running_loop().run_in_executor(None, start_capture, m.svc_port, pcap)
        try:
            status = await m.via("sleep", SECRET)
            await asyncio.sleep(0.5)
        finally:
            stop_capture(cap)
        return status, m.svc_port


def test_sidecar_mtls_capture_decrypts_with_the_sidecars_keylog(tmp_path: Path) -> None:
    status, port = run(_capture(tmp_path))
    assert status == 200
    pcap, keylog, embedded = tmp_path / "mtls.pcapng", tmp_path / "keys.log", tmp_path / "dsb.pcapng"
    assert keylog.exists() and "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()
    raw = pcap.read_bytes()
    assert SECRET.encode() not in raw and b"GET /" not in raw       # encrypted on the wire
    assert tshark_read(pcap, "tls.app_data", "-d", f"tcp.port=={port},tls")
    assert tshark_read(pcap, "http.request", "-d", f"tcp.port=={port},tls") == []
    kl = f"tls.keylog_file:{keylog}"
    uris = tshark_read(pcap, "http.request", "-o", kl, "-d", f"tcp.port=={port},tls",
                       fields="http.request.uri")
    assert uris == [SECRET]
    subprocess.run(["editcap", "--inject-secrets", f"tls,{keylog}", str(pcap), str(embedded)],
                   check=True, timeout=60)
    assert tshark_read(embedded, "http.request", "-d", f"tcp.port=={port},tls",
                       fields="http.request.uri") == [SECRET]
