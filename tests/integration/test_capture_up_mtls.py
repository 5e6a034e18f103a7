"""``minimesh up --capture DIR`` on Bookinfo after Istio's ``destination-rule-all-mtls.yaml``
(a mesh without a ``security:`` section: Citadel runs in every mesh): at exit the sidecars'
TLS secrets are embedded in every pcapng, so tshark decrypts the sidecar-to-sidecar mTLS with
no key log option, using exactly the line ``up`` prints (with the Decode As the service port
needs); ``get`` and ``delete -f`` work in the shell. Root only; nothing may be left running."""
from __future__ import annotations

import os
import random
import re
import shlex
import string
import subprocess

import pytest

from test_mesh_bookinfo_samples import NET, bookinfo_text
from test_net_support import assert_nothing_left, run_minimesh, snapshot

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def test_up_capture_embeds_tls_secrets_and_prints_decode_as(tmp_path):
    p = "mc" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    topo = tmp_path / "bookinfo.yaml"
    topo.write_text(bookinfo_text(p))
    cap = tmp_path / "pcap"
    url = "http://productpage:9080/productpage"
    script = "\n".join([f"apply {NET / 'destination-rule-all-mtls.yaml'}",
                        *[f"{p}u1 curl -s -o /dev/null -w 'code=%{{http_code}}\\n' {url}" for _ in range(3)],
                        "get destinationrule", f"delete -f {NET / 'destination-rule-all-mtls.yaml'}",
                        "get dr"]) + "\n"
    before = snapshot()
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--capture", str(cap), input=script, timeout=180)
    assert rc == 0, err[-3000:]
    assert out.count("code=200") == 3, out[-2000:]
    assert re.search(r"^reviews\s+reviews\s+\d+s$", out, re.M), out[-2000:]
    assert 'destinationrule.networking.istio.io "reviews" deleted' in out
    assert "No resources found in default namespace." in out
    assert "TLS secrets embedded in" in err and "decrypt the sidecars' mTLS without options" in err, err[-2000:]
    assert (cap / "tls-keys.log").read_text().count("CLIENT_TRAFFIC_SECRET_0") >= 2
    assert not (cap / ".tls-keys").exists()
    lines = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("tshark -r ")]
    assert lines and "-d tcp.port==9080,tls" in lines[0], err[-2000:]
    assert any(ln.strip().startswith("wireshark -d tcp.port==9080,tls ") for ln in err.splitlines())
    # the printed line (no -o tls.keylog_file), on productpage's host's file: HTTP inside the mTLS
    pp = cap / f"{p}pp-eth0.pcapng"
    argv = shlex.split(lines[0]) + ["-T", "fields", "-e", "http.request.uri"]
    argv[argv.index("-r") + 1] = str(pp)
    uris = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert "/productpage" in uris, (lines[0], uris)
    # the same packets are TLS on the wire (ALPN http/1.1), and productpage's calls decrypt too
    hello = subprocess.run(["tshark", "-r", str(pp), "-d", "tcp.port==9080,tls", "-Y", "tls.handshake.type == 1",
                            "-T", "fields", "-e", "tls.handshake.extensions_alpn_str"], capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    assert hello and set(hello) == {"http/1.1"}
    decrypted = subprocess.run(["tshark", "-r", str(pp), "-d", "tcp.port==9080,tls", "-Y", "http.request",
                                "-T", "fields", "-e", "http.request.uri"], capture_output=True, text=True,
                               check=True, timeout=60).stdout.split()
    assert "/reviews/0" in decrypted and "/details/0" in decrypted, decrypted
    assert_nothing_left(before)
