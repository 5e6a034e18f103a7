"""Citadel's state on disk, so that a restarted CA process keeps its roots and revocations.

`load_or_create(directory, **ca_kwargs)` returns a CertificateAuthority: the saved one when
`directory/ca.json` exists, else a new one (saved at once). `save(ca, directory)` writes
atomically (temp file + rename) with mode 0600: the file holds the root private keys.
Without this, a crashed-and-restarted Citadel would mint a new root and every sidecar's
trust bundle would be wrong until refreshed -- with it, `crash citadel` is a clean fault.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from testbed.mesh.citadel.ca import CertificateAuthority

STATE_FILE = "ca.json"


def save(ca: CertificateAuthority, directory: str | Path) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = d / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(ca.export_state(), f)
    os.replace(tmp, d / STATE_FILE)


def load_or_create(directory: str | Path, **ca_kwargs: Any) -> CertificateAuthority:
    ca = CertificateAuthority(**ca_kwargs)
    path = Path(directory) / STATE_FILE
    if path.exists():
        try:
            ca.import_state(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot load the saved CA: {e}") from None
    else:
        save(ca, directory)
    return ca
