"""Reading composed YAML nodes with line numbers: the :class:`Context` every topology
section parser (core and registered, e.g. ``mesh:``) uses.

PyYAML's ``safe_load`` loses line numbers and silently keeps the last of duplicate
keys; here the document is *composed* (``yaml.compose`` with SafeLoader) and walked
node by node, so every error names ``file:line`` and the field.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from testbed.topology.spec import HostSpec, SwitchSpec, TopologyError

__all__ = ["Context", "compose", "describe_node"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


def compose(text: str, file: str) -> Node | None:
    """Compose one YAML document; syntax errors become TopologyError at their line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (e.context, e.problem) if p)
        if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
            what += f" (the construct starts at line {e.context_mark.line + 1})"
        raise TopologyError(file, line, f"YAML syntax error: {what}") from None
    except yaml.YAMLError as e:  # e.g. a reader error (non-printable characters)
        raise TopologyError(file, None, f"YAML error: {e}") from None


def describe_node(node: Node) -> str:
    """'a list', 'a mapping', 'null', or the scalar's text, for error messages."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    if node.tag == _NULL_TAG:
        return "nothing (null)"
    return repr(node.value)


class Context:
    """What a section parser gets: error reporting at a node's line, checked readers for
    mappings/lists/scalars, and the nodes parsed so far (``hosts``, ``switches``, by name).
    """

    def __init__(self, file: str):
        self.file = file
        self.hosts: Mapping[str, HostSpec] = {}
        self.switches: Mapping[str, SwitchSpec] = {}
        self.linked: frozenset[str] = frozenset()   # nodes with at least one link
        self._constructor = yaml.constructor.SafeConstructor()
        self._open: set[int] = set()  # nodes being read: an alias back into one is a cycle

    # -- errors -----------------------------------------------------------------

    def error(self, node: Node | None, message: str) -> NoReturn:
        """Raise TopologyError at ``node``'s (1-based) line."""
        line = node.start_mark.line + 1 if node is not None else None
        raise TopologyError(self.file, line, message)

    @staticmethod
    def line(node: Node) -> int:
        return node.start_mark.line + 1

    # -- structure ----------------------------------------------------------------

    def mapping(self, node: Node, where: str, allowed: Iterable[str] | None = None,
                required: Iterable[str] = (), null_ok: bool = True) -> dict[str, tuple[Node, Node]]:
        """A mapping's entries as ``{key: (key_node, value_node)}``, in file order.

        Rejects non-mappings, non-scalar and duplicate keys (which PyYAML would merge
        silently), keys not in ``allowed`` (naming the allowed ones) and missing
        ``required`` keys. ``<<: *anchor`` merge keys supply defaults. A null value
        (``h1:`` with nothing after it) counts as an empty mapping when ``null_ok``.
        """
        if null_ok and isinstance(node, ScalarNode) and node.tag == _NULL_TAG:
            return {}
        if not isinstance(node, MappingNode):
            self.error(node, f"{where}: expected a mapping (key: value), got {describe_node(node)}")
        own: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        allowed_list = list(allowed) if allowed is not None else None
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for src in (value_node.value if isinstance(value_node, SequenceNode) else [value_node]):
                    with self._reading(src, where):
                        items = self.mapping(src, f"{where} (merged <<)", allowed_list, null_ok=False)
                    for k, kv in items.items():
                        merged.setdefault(k, kv)
                continue
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, f"{where}: a key must be a plain name, got {describe_node(key_node)}")
            key = key_node.value
            if key in own:
                self.error(key_node, f"{where}: duplicate key {key!r} (first at line {self.line(own[key][0])})")
            if allowed_list is not None and key not in allowed_list:
                self.error(key_node, f"{where}: unknown field {key!r}; allowed: " + ", ".join(allowed_list))
            own[key] = (key_node, value_node)
        result = {k: v for k, v in merged.items() if k not in own}
        result.update(own)
        for key in required:
            if key not in result:
                self.error(node, f"{where}: missing required field {key!r}")
        return result

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.error(node, f"{where}: expected a list, got {describe_node(node)}")
        return list(node.value)

    # -- scalars --------------------------------------------------------------------

    def scalar(self, node: Node, where: str) -> Any:
        """A scalar's value as YAML types it (int, float, str, bool, None)."""
        if not isinstance(node, ScalarNode):
            self.error(node, f"{where}: expected a single value, got {describe_node(node)}")
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            self.error(node, f"{where}: cannot read value {node.value!r}: {getattr(e, 'problem', e)}")

    def text(self, node: Node, where: str, what: str = "a name") -> str:
        """A scalar's text exactly as written (``yes`` stays 'yes'; a MAC such as
        ``10:20:30:40:50:59`` is not read as a YAML 1.1 base-60 number)."""
        if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG or node.value == "":
            self.error(node, f"{where}: expected {what}, got {describe_node(node)}")
        return node.value

    def integer(self, node: Node, where: str, minimum: int | None = None) -> int:
        value = self.scalar(node, where)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(node, f"{where}: expected a whole number, got {describe_node(node)}")
        if minimum is not None and value < minimum:
            self.error(node, f"{where}: must be >= {minimum}, got {value}")
        return value

    def node_ref(self, node: Node, where: str, kinds: str = "node") -> str:
        """A name that must be a parsed host (kinds='host'), switch ('switch') or either."""
        name = self.text(node, where, f"a {kinds} name")
        pool = {"host": self.hosts, "switch": self.switches}.get(kinds)
        known = pool if pool is not None else {**self.hosts, **self.switches}
        if name not in known:
            if kinds == "host" and name in self.switches:
                self.error(node, f"{where}: {name!r} is a switch; this needs a host; hosts: " + ", ".join(known))
            self.error(node, f"{where}: unknown {kinds} {name!r}; {kinds}s: " + ", ".join(known))
        return name

    def linked_host(self, node: Node, where: str) -> str:
        """A host name (:meth:`node_ref`) that must also have a link: one that runs a
        process the others reach (an etcd member, the control plane, a client...)."""
        name = self.node_ref(node, where, "host")
        if name not in self.linked:
            self.error(node, f"{where}: host {name!r} has no link, so nothing can reach it; "
                             f"add one under links:, e.g. - {{between: [{name}, s1]}}")
        return name

    def value(self, node: Node, where: str) -> Any:
        """Plain Python data (dicts/lists/scalars) for free-form parts; duplicate keys
        are still rejected."""
        with self._reading(node, where):
            if isinstance(node, MappingNode):
                return {k: self.value(v, f"{where}.{k}") for k, (_, v) in self.mapping(node, where).items()}
            if isinstance(node, SequenceNode):
                return [self.value(v, f"{where}[{i}]") for i, v in enumerate(node.value)]
            return self.scalar(node, where)

    @contextlib.contextmanager
    def _reading(self, node: Node, where: str) -> Iterator[None]:
        """Guard against alias cycles (``a: &x {<<: *x}``), which would recurse forever."""
        if id(node) in self._open:
            self.error(node, f"{where}: an alias refers back to a node that contains it")
        self._open.add(id(node))
        try:
            yield
        finally:
            self._open.discard(id(node))
