"""Strict structuring of parsed YAML into frozen attrs classes.

Why not cattrs: it coerces (``int("5")``, ``int(True)``, ``int(2.7)``) and
reports failures as exception groups; an operator editing a config file
wants the opposite: no coercion, and exactly one line naming the key path and
what was expected (``sip.tcp.port: expected an integer 1-65535, got 'abc'``).
The type vocabulary a config needs is small, so it is spelled out here.

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal``,
``Optional``, ``list[X]``, ``dict[str, X]``, nested attrs classes, and
``Annotated[base, check, ...]`` where each check is a :class:`Check`.
Custom leaf types (durations, sizes, paths) are :class:`Scalar` subclasses.
"""

import os
import re
import types
import typing
from pathlib import Path

import attrs
import yaml

__all__ = [
    "ConfigError",
    "Check",
    "Range",
    "NonEmpty",
    "Pattern",
    "Scalar",
    "Duration",
    "ByteSize",
    "FilePath",
    "StatePath",
    "structure",
    "load_yaml",
]


class ConfigError(Exception):
    """A configuration problem, located by its dotted key path."""

    def __init__(self, message, key_path=""):
        super().__init__(message, key_path)
        self.message = message
        self.key_path = key_path

    def __str__(self):
        if self.key_path:
            return f"{self.key_path}: {self.message}"
        return self.message


def _show(value):
    """A short, quoted rendering of a bad value for an error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


class Check:
    """A constraint on an already-typed value, used inside ``Annotated``."""

    def describe(self, base):
        """Extend the words for the base type (``an integer`` -> ``an integer 1-9``)."""
        return base

    def accepts(self, value):
        return True


def _fmt_bound(base, bound):
    if bound is None:
        return ""
    if base.startswith("a duration"):
        return f"{bound:g}s"
    return str(bound)


@attrs.frozen
class Range(Check):
    low: typing.Any = None
    high: typing.Any = None

    def describe(self, base):
        lo, hi = _fmt_bound(base, self.low), _fmt_bound(base, self.high)
        if base.startswith(("a duration", "a size")):
            base = base.split(" such as ")[0]
            if self.low is not None and self.high is not None:
                return f"{base} between {lo} and {hi}"
            return f"{base} of at least {lo}" if self.low is not None else f"{base} of at most {hi}"
        if self.low is not None and self.high is not None:
            return f"{base} {lo}-{hi}"
        return f"{base} >= {lo}" if self.low is not None else f"{base} <= {hi}"

    def accepts(self, value):
        return not (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        )


@attrs.frozen
class NonEmpty(Check):
    def describe(self, base):
        return "a non-empty " + base.removeprefix("an ").removeprefix("a ")

    def accepts(self, value):
        return len(value) > 0


@attrs.frozen
class Pattern(Check):
    regex: str
    meaning: str

    def describe(self, base):
        return self.meaning

    def accepts(self, value):
        return re.fullmatch(self.regex, value) is not None


class Scalar:
    """A leaf type with its own parser; subclasses set ``description``."""

    description = "a value"

    @classmethod
    def parse(cls, value, path, context):
        raise NotImplementedError


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")


class Duration(Scalar):
    """Seconds as a float; written as a number of seconds or '500ms', '10s', '5m', '4h', '7d'."""

    description = "a duration such as 500ms, 10s, 5m, 4h or 7d"

    @classmethod
    def parse(cls, value, path, context):
        if isinstance(value, bool):
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        if seconds < 0:
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        return seconds


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)


class ByteSize(Scalar):
    """Bytes as an int; written as a number or '64KiB', '1MiB', '10MB'."""

    description = "a size such as 65536, 64KiB or 1MiB"

    @classmethod
    def parse(cls, value, path, context):
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)):
            size = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
        else:
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        if size < 0:
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        return size


class FilePath(Scalar):
    """A filesystem path; relative paths are taken from the config file's folder."""

    description = "a file or folder path"

    @classmethod
    def parse(cls, value, path, context):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = Path(context.get("base_dir", ".")) / p
        return Path(os.path.normpath(p))


class StatePath(Scalar):
    """A path that, when relative, lies under the state directory.

    It is kept relative here; ``Config.in_state_dir`` resolves it.
    """

    description = "a file or folder path"

    @classmethod
    def parse(cls, value, path, context):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"expected {cls.description}, got {_show(value)}", path)
        return Path(value).expanduser()


_BASE_DESCRIPTIONS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _describe_base(tp):
    return _BASE_DESCRIPTIONS.get(tp, getattr(tp, "__name__", str(tp)))


def describe(tp):
    """Say in words what a value of annotation *tp* looks like."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *checks = typing.get_args(tp)
        text = describe(base)
        for check in checks:
            if isinstance(check, Check):
                text = check.describe(text)
        return text
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_optional(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(inner[0]) + " or null"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, Scalar):
        return tp.description
    if attrs.has(tp):
        return "a mapping"
    return _describe_base(tp)


def _is_optional(tp):
    origin = typing.get_origin(tp)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text, path, environ):
    """Replace ``${NAME}`` / ``${NAME:-default}``; ``$$`` is a literal ``$``."""

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set", path)

    return _ENV_RE.sub(sub, text)


def structure(value, tp, path="", context=None):
    """Turn plain YAML data *value* into annotation *tp*, or raise ConfigError."""
    context = context if context is not None else {}
    if isinstance(value, str):
        value = expand_env(value, path, context.get("environ", os.environ))
    origin = typing.get_origin(tp)

    if origin is typing.Annotated:
        base, *checks = typing.get_args(tp)
        try:
            result = structure(value, base, path, context)
        except ConfigError as e:
            if e.key_path == path and e.message.startswith("expected "):
                # Say the whole expectation (type and bounds), not just the type.
                raise ConfigError(f"expected {describe(tp)}, got {_show(value)}", path) from None
            raise
        if not all(c.accepts(result) for c in checks if isinstance(c, Check)):
            raise ConfigError(f"expected {describe(tp)}, got {_show(value)}", path)
        return result

    if _is_optional(tp):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return structure(value, inner[0], path, context)

    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(f"expected {describe(tp)}, got {_show(value)}", path)

    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {_show(value)}", path)
        return tuple(structure(v, item_tp, f"{path}[{i}]", context) for i, v in enumerate(value))

    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_show(value)}", path)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"expected string keys, got {_show(k)}", path)
            out[k] = structure(v, item_tp, _join(path, k), context)
        return out

    if isinstance(tp, type) and issubclass(tp, Scalar):
        return tp.parse(value, path, context)

    if attrs.has(tp):
        return _structure_attrs(value, tp, path, context)

    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a config bug
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    raise ConfigError(f"expected {describe(tp)}, got {_show(value)}", path)


def _structure_attrs(value, cls, path, context):
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {_show(value)}", path or "(top level)")
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    # YAML keys may use dashes or underscores; attributes use underscores.
    by_key = {}
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"expected string keys, got {_show(key)}", path or "(top level)")
        by_key[key.replace("-", "_")] = key
    unknown = sorted(k for k, name in ((by_key[n], n) for n in by_key) if name not in fields)
    if unknown:
        raise ConfigError(
            "unknown key (expected one of: " + ", ".join(sorted(fields)) + ")",
            _join(path, unknown[0]),
        )
    kwargs = {}
    for name, field in fields.items():
        if name in by_key:
            key = by_key[name]
            kwargs[name] = structure(value[key], field.type, _join(path, key), context)
        elif field.default is attrs.NOTHING:
            raise ConfigError(f"missing required key ({describe(field.type)})", _join(path, name))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml(text, source="config"):
    """Parse YAML text, raising ConfigError that names line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{source}: {where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
