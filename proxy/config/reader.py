"""Strict reading of Envoy configuration trees.

:class:`Obj` wraps one mapping of the bootstrap together with its path
(``static_resources.listeners[0].filter_chains[0]``).  Callers take the fields they
support with :meth:`Obj.take`; :meth:`Obj.done` then rejects every field left over,
so a field that would change behaviour is never silently ignored.  Errors read
``PATH: message`` like ``envoy --mode validate``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Literal, overload

__all__ = ["ConfigError", "Obj", "duration_s", "percent", "MISSING"]


class ConfigError(Exception):
    """The configuration is invalid; ``str(e)`` is ``path: message``."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_DUR_RE = re.compile(r"^(-?\d+(?:\.\d+)?)s$")


class Obj:
    """A mapping being read; every key must be taken (or explicitly ignored)."""

    __slots__ = ("data", "path", "_taken")

    def __init__(self, data: Any, path: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self._taken: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def take(self, key: str, default: Any = MISSING, kind: type | tuple[type, ...] | None = None,
             choices: tuple[object, ...] | None = None, aliases: tuple[str, ...] = ()) -> Any:
        """The value of ``key`` (or of one alias); ``default`` if absent, error if required."""
        found = [k for k in (key, *aliases) if k in self.data]
        if len(found) > 1:
            raise ConfigError(self.path, f"fields {found[0]!r} and {found[1]!r} are aliases; give one")
        self._taken.update(found)
        if not found:
            if default is MISSING:
                raise ConfigError(self.sub(key), "required field is missing")
            return default
        value = self.data[found[0]]
        path = self.sub(found[0])
        if kind is not None:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, bool) and kind in (int, float):
                raise ConfigError(path, f"expected a number, got {value!r}")
            if not isinstance(value, kind):
                want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
                raise ConfigError(path, f"expected {want}, got {type(value).__name__} {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(path, f"unsupported value {value!r}; allowed: {', '.join(map(str, choices))}")
        return value

    @overload
    def obj(self, key: str, required: Literal[True]) -> Obj: ...

    @overload
    def obj(self, key: str, required: bool = False) -> Obj | None: ...

    def obj(self, key: str, required: bool = False) -> Obj | None:
        if key not in self.data and not required:
            self._taken.add(key)
            return None
        value = self.take(key)
        return Obj(value, self.sub(key))

    def objs(self, key: str) -> Iterator["Obj"]:
        """Each element of a list of mappings under ``key`` (absent = empty)."""
        items = self.take(key, [], list)
        for i, item in enumerate(items):
            yield Obj(item, f"{self.sub(key)}[{i}]")

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.take(key, [], list)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{self.sub(key)}[{i}]", f"expected a string, got {item!r}")
        return tuple(items)

    def duration(self, key: str, default: Any = MISSING) -> Any:
        value = self.take(key, default)
        if value is default:
            return default
        return duration_s(value, self.sub(key))

    def ignore(self, *keys: str) -> None:
        """Accept fields that do not change behaviour (names, comments, descriptions)."""
        self._taken.update(keys)

    def done(self) -> None:
        for key in self.data:
            if key not in self._taken:
                raise ConfigError(self.path, f"unsupported field {key!r}")

    @overload
    def one_of(self, keys: tuple[str, ...], required: Literal[True] = True) -> str: ...

    @overload
    def one_of(self, keys: tuple[str, ...], required: bool) -> str | None: ...

    def one_of(self, keys: tuple[str, ...], required: bool = True) -> str | None:
        present = [k for k in keys if k in self.data]
        if len(present) > 1:
            raise ConfigError(self.path, f"only one of {', '.join(present)} may be given")
        if not present:
            if required:
                raise ConfigError(self.path, f"one of {', '.join(keys)} is required")
            return None
        return present[0]


def duration_s(value: Any, path: str) -> float:
    """``"1s"``, ``"0.25s"`` or ``{seconds, nanos}`` in seconds."""
    if isinstance(value, str):
        m = _DUR_RE.match(value.strip())
        if not m:
            raise ConfigError(path, f"bad duration {value!r}; write e.g. \"1s\" or \"0.25s\"")
        seconds = float(m.group(1))
    elif isinstance(value, dict):
        o = Obj(value, path)
        seconds = float(o.take("seconds", 0, (int, str))) + o.take("nanos", 0, int) / 1e9
        o.done()
    else:
        raise ConfigError(path, f"bad duration {value!r}; write e.g. \"1s\"")
    if seconds < 0:
        raise ConfigError(path, f"duration must not be negative, got {value!r}")
    return seconds


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def percent(value: Any, path: str) -> float:
    """A FractionalPercent ``{numerator, denominator}`` or Percent ``{value}`` as 0..100."""
    o = Obj(value, path)
    if o.has("value"):
        result = float(o.take("value", kind=float))
    else:
        num = o.take("numerator", 0, int)
        den = _DENOMINATORS[o.take("denominator", "HUNDRED", str, tuple(_DENOMINATORS))]
        result = 100.0 * num / den
    o.done()
    return max(0.0, min(100.0, result))


def typed(o: Obj, key_names: tuple[str, ...], accept_type_urls: tuple[str, ...]) -> Obj:
    """The config object of a named extension: ``typed_config`` (v3) or ``config`` (v2).

    ``@type`` in typed_config must be one of ``accept_type_urls``."""
    which = o.one_of(("typed_config", "config"), required=False)
    if which is None:
        o.ignore("typed_config", "config")
        return Obj({}, o.sub("typed_config"))
    raw = o.take(which)
    inner = Obj(raw, o.sub(which))
    url = inner.take("@type", None, str)
    if url is not None and accept_type_urls and url not in accept_type_urls:
        raise ConfigError(inner.sub("@type"),
                          f"type {url!r} does not fit filter {o.data.get('name')!r}; "
                          f"expected {' or '.join(accept_type_urls)}")
    return inner


Parse = Callable[[Obj], Any]
