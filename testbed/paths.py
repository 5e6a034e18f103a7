"""Where minimesh's own files are: the checkout (or installed tree) and its topologies; and
whose the files it writes for the user are (:func:`hand_over`)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
EXPERIMENTS = REPO / "experiments"


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for minimesh's own child processes (``python -m testbed...``): ``base``
    (default: ours) with the repository first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def sudo_owner(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(uid, gid) of the user who ran ``sudo minimesh ...`` (SUDO_UID/SUDO_GID), or None."""
    e = os.environ if env is None else env
    uid, gid = e.get("SUDO_UID", ""), e.get("SUDO_GID", "")
    if not uid.isdigit() or not gid.isdigit() or int(uid) == 0:
        return None
    return int(uid), int(gid)


def hand_over(path: str | os.PathLike[str], owner: tuple[int, int] | None = None) -> Path:
    """Make a file or directory minimesh wrote (results, plots, captures, histories, logs)
    the invoking user's: owned by SUDO_UID/SUDO_GID when root runs under sudo (``owner``
    overrides), and readable by everyone: 0644 for files (0755 when executable), 0755 for
    directories. A missing path is left alone. Returns the path. The one function every
    writer of user-facing files calls, so ``sudo minimesh`` leaves nothing only root can open."""
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return p
    if p.is_symlink():
        return p
    mode = 0o755 if p.is_dir() or st.st_mode & 0o111 else 0o644
    if st.st_mode & 0o7777 != mode:
        os.chmod(p, mode)
    who = owner if owner is not None else sudo_owner()
    if who is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != who:
        os.chown(p, *who)
    return p


def user_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, every directory it creates handed over (:func:`hand_over`)."""
    p = Path(path)
    missing = [d for d in (p, *p.parents) if not d.exists()]
    p.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        hand_over(d)
    return p


def hand_over_tree(root: str | os.PathLike[str]) -> None:
    """:func:`hand_over` of ``root`` and everything under it (not following symlinks)."""
    r = Path(root)
    if not r.is_dir():
        hand_over(r)
        return
    hand_over(r)
    for dirpath, dirnames, filenames in os.walk(r):
        for name in dirnames + filenames:
            hand_over(Path(dirpath) / name)
