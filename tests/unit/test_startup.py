"""`minimesh --help` (and so every `minimesh` command's start) loads only what building the
parser needs: no Mininet, no event loop, no plotting or table libraries, no experiment runner."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("mininet", "asyncio", "aiohttp", "cryptography", "rich", "matplotlib", "pyroute2",
         "testbed.run", "testbed.history", "testbed.mesh.rules.galley", "testbed.mesh.deploy")


def test_help_loads_nothing_heavy():
    code = ("import sys, contextlib, io\n"
            "from testbed.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('\\n'.join(sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"`minimesh --help` loads {heavy}"


def test_a_plaintext_sidecar_never_loads_cryptography():
    """Citadel runs in every mesh, but a sidecar that holds no identity (``citadel: false``,
    or minimesh-proxy on a plain Envoy config) stays without ``cryptography`` (~16 MB of RSS,
    docs/performance.md): its native module is not mapped into the running process."""
    from tests.support.configs import placeholders, render, CONFIG_DIR
    from tests.support.ports import free_ports
    from tests.support.procs import start_proxy
    names = placeholders((CONFIG_DIR / "minimal.yaml").read_text())
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    with start_proxy("minimesh", render("minimal.yaml", ports), ports["ADMIN_PORT"]) as p:
        maps = Path(f"/proc/{p.pid}/maps").read_text()
        assert "python" in maps and "cryptography" not in maps
