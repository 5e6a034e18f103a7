"""YAML documents that keep their line numbers, and a typed field reader that turns
schema problems into Istio-style messages (IST0106 / MM0002) with file:line, plus the
document header checks (kind, name, apiVersion, metadata) -- shared by the traffic rules
(:mod:`testbed.mesh.rules.traffic`) and the security rules (:mod:`testbed.mesh.rules.security`).

    r = Reader("rules.yaml", "VirtualService default/reviews")
    for doc in load_documents(text):
        f = r.fields(doc, "spec", ("hosts", "http"))
    r.messages     # every problem, in order
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from testbed.mesh.model import ERROR, WARNING, Message

__all__ = ["Y", "load_documents", "read_documents", "parse_duration_ms", "Reader", "kind_of",
           "document_identity", "check_header"]


@dataclass
class Y:
    """A YAML node: `v` is a str/int/float/bool/None, a dict[str, Y] or a list[Y]."""

    v: Any
    line: int

    def plain(self) -> Any:
        if isinstance(self.v, dict):
            return {k: c.plain() for k, c in self.v.items()}
        if isinstance(self.v, list):
            return [c.plain() for c in self.v]
        return self.v


def _to_y(node: yaml.Node, loader: yaml.SafeLoader) -> Y:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        return Y({str(k.value): _to_y(v, loader) for k, v in node.value}, line)
    if isinstance(node, yaml.SequenceNode):
        return Y([_to_y(c, loader) for c in node.value], line)
    return Y(loader.construct_object(node), line)


def _empty(node: yaml.Node | None) -> bool:
    """An empty document (``---`` at the end of a file, or only comments): kubectl and
    istioctl skip it, and so do we."""
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
                            and node.value in ("", "~", "null"))


def load_documents(text: str) -> list[Y]:
    """All non-empty documents of a YAML text, as line-carrying `Y` trees (empty ones,
    such as the one after a trailing ``---``, are skipped as kubectl skips them)."""
    loader = yaml.SafeLoader("")
    return [_to_y(n, loader) for n in yaml.compose_all(text, Loader=yaml.SafeLoader)
            if not _empty(n)]


def read_documents(text: str, file: str) -> tuple[list[Y], list[Message]]:
    """:func:`load_documents`, with YAML that does not parse turned into one IST0106 message
    (file:line of the problem) instead of an exception."""
    try:
        return load_documents(text), []
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [], [Message("IST0106", ERROR, f"Schema validation error: not valid YAML: {e}",
                            file, mark.line + 1 if mark else 0)]


_DUR = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration_ms(text: str) -> int:
    """'1.5s', '100ms', '3m', '1h30m' -> milliseconds; ValueError otherwise."""
    s = str(text).strip()
    if not s or _DUR.sub("", s):
        raise ValueError(f"bad duration {text!r}: use a number with a unit h, m, s or ms "
                         "(e.g. 1.5s, 100ms, 3m)")
    mult = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    return round(sum(float(n) * mult[u] for n, u in _DUR.findall(s)))


class Reader:
    """Typed field access that records IST0106 messages with file:line."""

    def __init__(self, file: str, resource: str) -> None:
        self.file, self.resource = file, resource
        self.messages: list[Message] = []

    def err(self, y: Y, path: str, text: str) -> None:
        self.messages.append(Message("IST0106", ERROR, f"Schema validation error: {path}: "
                                     f"{text}", self.file, y.line, self.resource))

    def deprecated(self, y: Y, path: str, instead: str) -> None:
        """A field Istio still accepts but has deprecated: applied, with istioctl's warning."""
        self.messages.append(Message("IST0004", WARNING, f"Deprecated: {path} is deprecated; use "
                                     f"{instead} (applied with the same meaning)", self.file,
                                     y.line, self.resource))

    def fields(self, y: Y, path: str, allowed: tuple[str, ...],
               unsupported: tuple[str, ...] = ()) -> dict[str, Y]:
        if not isinstance(y.v, dict):
            self.err(y, path, f"expected a mapping, got {kind_of(y.v)}")
            return {}
        for k, c in y.v.items():
            if k in unsupported:
                self.messages.append(Message(
                    "MM0002", ERROR, f"{path}.{k}: not supported by minimesh yet",
                    self.file, c.line, self.resource))
            elif k not in allowed:
                self.err(c, f"{path}.{k}", f"unknown field; allowed: {', '.join(allowed)}")
        return {k: c for k, c in y.v.items() if k in allowed}

    def items(self, y: Y | None, path: str) -> Iterator[tuple[str, Y]]:
        if y is None:
            return
        if not isinstance(y.v, list):
            self.err(y, path, f"expected a list, got {kind_of(y.v)}")
            return
        for i, c in enumerate(y.v):
            yield f"{path}[{i}]", c

    def string(self, y: Y | None, path: str) -> str:
        if y is None or y.v is None:
            return ""
        if not isinstance(y.v, str) or not y.v:
            self.err(y, path, f"expected a non-empty string, got {kind_of(y.v)}")
            return ""
        return y.v

    def integer(self, y: Y | None, path: str, lo: int = 0, hi: int = 2**32 - 1) -> int | None:
        if y is None:
            return None
        if isinstance(y.v, bool) or not isinstance(y.v, int) or not lo <= y.v <= hi:
            self.err(y, path, f"expected an integer in {lo}..{hi}, got {y.v!r}")
            return None
        return y.v

    def duration(self, y: Y | None, path: str) -> int | None:
        if y is None:
            return None
        try:
            return parse_duration_ms(y.v)
        except ValueError as e:
            self.err(y, path, str(e))
            return None

    def percentage(self, y: Y | None, path: str) -> float:
        if y is None:
            return 100.0
        f = self.fields(y, path, ("value",))
        v = f.get("value")
        if v is None or isinstance(v.v, bool) or not isinstance(v.v, (int, float)) \
                or not 0 <= v.v <= 100:
            self.err(v or y, f"{path}.value", f"percentage must be a number in 0..100, "
                     f"got {None if v is None else v.v!r}")
            return 100.0
        return float(v.v)

    def labels(self, y: Y | None, path: str) -> tuple[tuple[str, str], ...]:
        if y is None:
            return ()
        if not isinstance(y.v, dict):
            self.err(y, path, f"expected a mapping of labels, got {kind_of(y.v)}")
            return ()
        return tuple(sorted((k, str(c.v)) for k, c in y.v.items()))


def kind_of(v: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(v), repr(v))


def document_identity(doc: Y) -> tuple[str, str]:
    """(kind, metadata.name) of an Istio YAML document, "?" where missing."""
    top = doc.v if isinstance(doc.v, dict) else {}
    kind = str(top["kind"].v) if "kind" in top else "?"
    meta = top.get("metadata")
    name = str(meta.v["name"].v) if meta and isinstance(meta.v, dict) and "name" in meta.v \
        else "?"
    return kind, name


def check_header(r: Reader, doc: Y, f: dict, api: Any, groups: tuple[str, ...]) -> str:
    """Check apiVersion and metadata (errors go to ``r``); returns the namespace."""
    if api not in groups:
        r.err(f.get("apiVersion", doc), "apiVersion", f"{api!r} is not one of {', '.join(groups)}")
    meta = doc.v.get("metadata") if isinstance(doc.v, dict) else None
    mf = r.fields(meta, "metadata", ("name", "namespace", "labels", "annotations")) \
        if meta else {}
    if "name" not in mf:
        r.err(doc, "metadata.name", "required field missing")
    return r.string(mf.get("namespace"), "metadata.namespace") or "default"
