"""Request targets and request heads as Envoy 1.40 (its default Balsa parser) takes them.

* :func:`target_error` -- why a request target is refused with 400 (``None``: accepted),
  decided as Envoy decides (RFC 9112 3.2): origin-form without a fragment, absolute-form
  with an ``http``/``https`` scheme, a non-empty host and a port of 1-65535 digits,
  ``*`` only with OPTIONS, authority-form only with CONNECT.
* :func:`host_error` -- why a Host value is refused (whitespace and control bytes).
* :func:`normalize_head` -- the lenient head forms Envoy accepts, rewritten to strict
  HTTP/1.1 for llhttp: bare LF line ends (RFC 9112 2.2 allows a recipient to take them),
  obs-fold replaced by SP (5.2), HTAB between request-line words and whitespace after the
  version (3).
* :func:`needs_normalizing` -- a cheap test whether bytes may hold such a form.

docs/proxy.md ("Lenient and malformed HTTP/1") holds the table of each case.
"""
from __future__ import annotations

import re

__all__ = ["target_error", "host_error", "normalize_head", "needs_normalizing", "head_end", "unsupported_coding"]

_SCHEME = re.compile(rb"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT = re.compile(rb"^[0-9]{1,5}$")
_CONNECT_TARGET = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[^\[\]/?#@*:\x00-\x20]+):[0-9]+$")
_BAD_HOST = re.compile(rb"[\x00-\x20\x7f]")
_BAD_HOST_HEADER = re.compile(rb"[\x00-\x20\x7f/?#\\]")
_HEAD_END = re.compile(rb"\n\r?\n")
_LEADING = re.compile(rb"^[\r\n]*")
_FIELD_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00\r\n]*$")
_H2C = re.compile(rb"(?i)h2c")
_H2C_UPGRADE = re.compile(rb"(?i)^upgrade[ \t]*:[ \t]*h2c[ \t]*$")
_H2_SETTINGS = re.compile(rb"(?i)^http2-settings[ \t]*:")
_CONNECTION = re.compile(rb"(?i)^connection[ \t]*:(.*)$")
_TE_LINE = re.compile(rb"(?im)^transfer-encoding[ \t]*:[ \t]*([^\r\n]*)")


def _authority_error(authority: bytes) -> str | None:
    at = authority.rfind(b"@")
    host = authority[at + 1:]
    port: bytes | None
    if host.startswith(b"["):
        close = host.find(b"]")
        if close < 0:
            return "unterminated IPv6 literal"
        name, after = host[:close + 1], host[close + 1:]
        if after and not after.startswith(b":"):
            return "bytes after an IPv6 literal"
        port = after[1:] if after else None
    else:
        name, sep, port_b = host.partition(b":")
        port = port_b if sep else None
    if len(name) == 0:
        return "empty host"
    if _BAD_HOST.search(name):
        return "invalid character in host"
    if port is not None and (not _PORT.match(port) or int(port) > 65535):
        return f"invalid port {port!r}"
    return None


def target_error(method: bytes, target: bytes) -> str | None:
    """Why Envoy answers 400 to this request target, or None."""
    if method == b"CONNECT":
        if not _CONNECT_TARGET.match(target):
            return "CONNECT needs an authority-form target (host:port)"
        return _authority_error(target)
    if target.startswith(b"/"):
        return "fragment in request target" if b"#" in target else None
    if target == b"*":
        return None if method == b"OPTIONS" else "'*' is a target for OPTIONS only"
    m = _SCHEME.match(target)
    if m is None:
        return "request target is neither origin-form nor absolute-form"
    if m.group(1).lower() not in (b"http", b"https"):
        return f"scheme {m.group(1).decode('latin-1')!r} (only http and https are proxied)"
    if b"#" in target:
        return "fragment in request target"
    rest = target[m.end():]
    end = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    return _authority_error(rest[:end])


def host_error(value: bytes) -> str | None:
    """Why Envoy refuses this Host header value, or None: whitespace, control bytes,
    ``/ ? # \\``, an unterminated ``[``. It forwards an empty one, and any port."""
    if _BAD_HOST_HEADER.search(value):
        return "invalid character in Host"
    if value.startswith(b"[") and b"]" not in value:
        return "unterminated IPv6 literal in Host"
    return None


def needs_normalizing(data: bytes) -> bool:
    """True when ``data`` may hold a lenient head form (a bare LF, obs-fold, a tab);
    False proves it holds none, so the strict parser can take it as is."""
    return (b"\t" in data or b"\n " in data or b" \r\n" in data or _H2C.search(data) is not None
            or data.count(b"\n") != data.count(b"\r\n"))


def head_end(buf: bytes) -> int:
    """Index just past the blank line ending the head that starts ``buf`` (leading empty
    lines skipped, as RFC 9112 2.2 allows), or -1 when the head is not complete yet."""
    start = _LEADING.match(buf).end()      # type: ignore[union-attr]  # ^[..]* always matches
    m = _HEAD_END.search(buf, start)
    return -1 if m is None else m.end()


def normalize_head(head: bytes) -> bytes:
    """A complete head (request line, fields, blank line) with bare LFs made CRLF, each
    obs-fold made one SP, HTABs in the request line made SP and whitespace around it dropped."""
    head = _LEADING.sub(b"", head)
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in head.split(b"\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        return b""
    out = [b" ".join(lines[0].replace(b"\t", b" ").split(b" ")).strip(b" ")]
    for ln in lines[1:]:
        if ln[:1] in (b" ", b"\t") and len(out) > 1:
            out[-1] = out[-1].rstrip(b" \t") + b" " + ln.strip(b" \t")
        else:
            out.append(ln)
    return b"\r\n".join(_without_h2c(out)) + b"\r\n\r\n"


def _without_h2c(lines: list[bytes]) -> list[bytes]:
    """An h2c upgrade request is served as plain HTTP/1.1 with the upgrade stripped, as
    Envoy does: no ``Upgrade: h2c``, no ``HTTP2-Settings``, no ``upgrade`` Connection token
    (so llhttp parses its body as a body, not as the upgraded protocol)."""
    upgrades = [ln for ln in lines[1:] if ln[:8].lower() == b"upgrade:" or ln[:8].lower() == b"upgrade "]
    if len(upgrades) != 1 or not _H2C_UPGRADE.match(upgrades[0]):
        return lines            # repeated, the joined value is no longer h2c: refused later (403)
    out = [lines[0]]
    for ln in lines[1:]:
        if _H2C_UPGRADE.match(ln) or _H2_SETTINGS.match(ln):
            continue
        m = _CONNECTION.match(ln)
        if m:
            tokens = [t.strip() for t in m.group(1).split(b",") if t.strip().lower() not in (b"upgrade", b"")]
            if not tokens:
                continue
            ln = b"Connection: " + b", ".join(tokens)
        out.append(ln)
    return out


def unsupported_coding(data: bytes) -> bool:
    """True when the head at the start of ``data`` names a transfer coding Envoy answers
    501 to: anything but one ``chunked``, or any on a CONNECT (checked before the version
    and the target)."""
    end = data.find(b"\r\n\r\n")
    head = data[:end if end >= 0 else len(data)]
    if not all(_FIELD_LINE.match(ln) for ln in head.split(b"\r\n")[1:]):
        return False            # a malformed field line is a 400 to Envoy, found first
    codings = [m.group(1).strip().lower() for m in _TE_LINE.finditer(head)]
    return bool(codings) and (codings != [b"chunked"] or head.startswith(b"CONNECT "))
