"""manifest.yaml text written without PyYAML's Python representer, byte for byte as
``yaml.dump(data, sort_keys=False, allow_unicode=True)`` writes it.

PyYAML builds a node per value in Python and asks its resolver about every string before
libyaml emits anything: ~0.1 s for a manifest of 3,000 files, paid by every publish that
compares the text it would write with the target's. Manifests are mappings, lists, text,
integers, booleans and nulls in block style, which is simple to write: :func:`dump` writes
those, asks PyYAML itself how to write each string it cannot tell at a glance (remembered
per string), and answers None for anything else (a float, a key too long for a simple key, a
string that could wrap), which the caller then dumps with PyYAML as before.

Timestamps (``created: 0001-01-01T00:00:00Z``, as the upstream Go axon writes them) are read
as :class:`Timestamp`: text, kept exactly as written, that is written back plain (a YAML
timestamp again). JSON carries it as that text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")

WIDTH = 80  # PyYAML's default line width: plain and quoted strings may wrap beyond it
CACHED = 256  # strings up to this long have their way of writing remembered
SIMPLE_KEY = 128  # a key this long or longer is written as "? key" (not done here)

# text that is plain in YAML unless one of the resolver's patterns (int, float, bool, null,
# timestamp...) takes it: a letter, digit or '_' first, then no indicator, space or quote
_PLAIN_CANDIDATE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*")
# line breaks as YAML counts them: a key holding one is not a simple key
_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")
_END = "\n...\n"


TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class Timestamp(str):
    """A YAML timestamp, kept as the text it was written as (``0001-01-01T00:00:00Z``,
    ``2026-11-30``): a ``str`` everywhere (JSON, comparisons, digests), written back to YAML
    plain, so YAML (and the upstream Go axon's ``time.Time`` fields) read a timestamp again.
    Text that is not a YAML timestamp is written as any other string."""

    __slots__ = ()


def is_timestamp(text: str) -> bool:
    """Does YAML read ``text``, written plain, as a timestamp?"""
    return bool(text) and text[0].isdigit() and _resolved_tag(text) == TIMESTAMP_TAG


class _Unsupported(Exception):
    """A value this writer leaves to PyYAML."""


def dump(data: dict[str, Any]) -> str | None:
    """The YAML text of ``data`` (a mapping), or None when it holds anything beyond what
    this writer knows to write exactly as PyYAML would."""
    if type(data) is not dict:
        return None
    if not data:
        return "{}\n"
    out: list[str] = []
    try:
        _mapping(data, 0, "", out)
    except (_Unsupported, RecursionError, ValueError):  # ValueError: an int too long for str()
        return None
    out.append("")
    return "\n".join(out)


def _mapping(data: dict[Any, Any], indent: int, first: str, out: list[str]) -> None:
    """Block mapping items at ``indent``; the first line starts with ``first`` instead of
    spaces (``"- "`` inside a sequence)."""
    pad = " " * indent
    lead = first or pad
    for key, value in data.items():
        if type(key) is not str or len(key) >= SIMPLE_KEY or _BREAKS.search(key):
            raise _Unsupported
        k = _string(key, len(lead))
        if "\n" in k:
            raise _Unsupported
        kind = type(value)
        if kind is dict and value:
            out.append(f"{lead}{k}:")
            _mapping(value, indent + 2, "", out)
        elif kind is list and value:
            out.append(f"{lead}{k}:")
            _sequence(value, indent, "", out)  # indentless in a mapping
        else:
            out.append(f"{lead}{k}: {_scalar(value, len(lead) + len(k) + 2)}")
        lead = pad


def _sequence(items: list[Any], indent: int, first: str, out: list[str]) -> None:
    pad = " " * indent
    lead = first or pad
    for item in items:
        kind = type(item)
        if kind is dict and item:
            _mapping(item, indent + 2, lead + "- ", out)
        elif kind is list and item:
            _sequence(item, indent + 2, lead + "- ", out)
        else:
            out.append(f"{lead}- {_scalar(item, len(lead) + 2)}")
        lead = pad


def _scalar(value: Any, column: int) -> str:
    kind = type(value)
    if kind is str:
        return _string(value, column)
    if kind is Timestamp:
        if not is_timestamp(value):
            return _string(str(value), column)
        if column + len(value) > WIDTH and " " in value:
            raise _Unsupported  # PyYAML may break it at a space
        return str(value)
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is dict:
        return "{}"  # empty: a non-empty one is a block
    if kind is list:
        return "[]"
    raise _Unsupported  # floats, dates, bytes...: PyYAML's own ways


def _string(text: str, column: int) -> str:
    """``text`` as PyYAML writes it starting at ``column``."""
    if _PLAIN_CANDIDATE.fullmatch(text) and (
        text[0] not in _resolved_first() or not _resolves(text)
    ):
        return text
    written = _written(text)
    if written is None:
        raise _Unsupported
    # PyYAML breaks a line at a space (or, double-quoted, anywhere) past the width
    if column + len(written) > WIDTH and (" " in written or written.startswith('"')):
        raise _Unsupported
    return written


def _small(function: Callable[[str], T]) -> Callable[[str], T]:
    """``function`` remembering its answers for short texts only (keys, digests, dates): a
    hostile manifest's long strings must not fill the memory of a server."""
    remembered = lru_cache(maxsize=4096)(function)

    def answer(text: str) -> T:
        return remembered(text) if len(text) <= CACHED else function(text)

    return answer


@lru_cache(maxsize=1)
def _resolved_first() -> frozenset[str]:
    """The first characters of text YAML may read as something other than a string."""
    from yaml.resolver import Resolver

    return frozenset(Resolver.yaml_implicit_resolvers)


@_small
def _resolves(text: str) -> bool:
    """Does YAML read ``text``, written plain, as something other than a string?"""
    return _resolved_tag(text) is not None


@_small
def _resolved_tag(text: str) -> str | None:
    """The tag YAML gives ``text`` written plain, when it is not a string's (None)."""
    from yaml.resolver import Resolver

    for tag, pattern in Resolver.yaml_implicit_resolvers.get(text[0], ()):
        if pattern.match(text):
            return str(tag)
    return None


@_small
def _written(text: str) -> str | None:
    """``text`` written by PyYAML on one line (None when it takes more)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    try:
        written = yaml.dump(text, Dumper=dumper, allow_unicode=True, width=10**9)
    except UnicodeEncodeError:  # a lone surrogate: the caller's fallback handles it
        return None
    # a plain scalar as the whole document ends with a document end marker
    written = written[: -len(_END)] if written.endswith(_END) else written[:-1]
    return None if "\n" in written else written


# ---- reading ---------------------------------------------------------------------------------
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./+-]*):(?: (.*))?")
_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None}


def load(text: str) -> dict[str, Any] | None:
    """The mapping ``text`` holds when it is exactly what :func:`dump` writes for it (then
    PyYAML reads the same mapping: it reads back what it wrote), else None: the caller
    parses it with PyYAML. Every result is checked by writing it again, so a text this
    reader gets wrong is never taken (3,000 files: ~35 ms, PyYAML's C loader ~70 ms)."""
    if not text.endswith("\n") or text == "{}\n":
        return {} if text == "{}\n" else None
    lines: list[tuple[int, str]] = []
    for line in text[:-1].split("\n"):
        content = line.lstrip(" ")
        lines.append((len(line) - len(content), content))
    try:
        reader = _Reader(lines)
        data = reader.mapping(0)
        if reader.at != len(lines) or type(data) is not dict:
            return None
    except (_Unsupported, RecursionError, ValueError, IndexError):
        return None
    return data if dump(data) == text else None


class _Reader:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.at = 0

    def node(self, indent: int) -> Any:
        """The block node starting at the current line, at ``indent``."""
        content = self.lines[self.at][1]
        if content.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        lines = self.lines
        while self.at < len(lines):
            level, content = lines[self.at]
            if level != indent:
                if level > indent:
                    raise _Unsupported
                break
            match = _KEY.fullmatch(content)
            if match is None:
                raise _Unsupported
            key, value = match.group(1, 2)
            self.at += 1
            if value is not None:
                out[key] = _value(value)
                continue
            if self.at == len(lines):
                raise _Unsupported
            level, content = lines[self.at]
            if level == indent and content.startswith("- "):
                out[key] = self.sequence(indent)  # indentless, as PyYAML writes it
            elif level == indent + 2:
                out[key] = self.mapping(indent + 2)
            else:
                raise _Unsupported
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        lines = self.lines
        while self.at < len(lines):
            level, content = lines[self.at]
            if level != indent or not content.startswith("- "):
                if level > indent:
                    raise _Unsupported
                break
            rest = content[2:]
            if rest.startswith("- ") or _KEY.fullmatch(rest):
                lines[self.at] = (indent + 2, rest)  # the item's first line, its own indent
                out.append(self.node(indent + 2))
            else:
                out.append(_value(rest))
                self.at += 1
        return out


def _value(token: str) -> Any:
    """A scalar as :func:`dump` writes one (anything else fails the check by writing)."""
    if token in _WORDS:
        return _WORDS[token]
    if token == "{}":
        return {}
    if token == "[]":
        return []
    if _INT.fullmatch(token):
        return int(token)
    if token[4:5] == "-" and is_timestamp(token):  # YYYY-...: never a digest or a size
        return Timestamp(token)
    if token[:1] in ("'", '"'):
        return _quoted(token)
    return token


@_small
def _quoted(token: str) -> str:
    import yaml

    try:
        value = yaml.load(token, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe
    except yaml.YAMLError:
        raise _Unsupported from None
    if type(value) is not str:
        raise _Unsupported
    return value
