"""Pipeline text in the style of MLIR's pass pipelines, and back::

    insert-relu{after=layer3},fuse-linear-relu,quantize-linear{mode=dynamic exclude=layer3}

Options inside braces are separated by spaces; a value is a bare word (no spaces, braces,
commas or quotes), a comma-separated list of bare words, or a double-quoted string.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Union

from ..errors import FxlabError, PipelineError, did_you_mean
from .base import _REGISTRY, Pass

#: Where the parser notes, on a pass it built, which options the text gave and in which order,
#: so that formatting writes them back even when they equal their defaults.
_EXPLICIT = "_fxlab_explicit"

_BARE = re.compile(r"[^\s{}\",=]+")
_NAME = re.compile(r"[^\s{}\",=]+")  # a whole word, so that a misspelt name is reported whole


class _Quoted(str):
    """A value written in double quotes: always a string, never a number or keyword."""


_KEYWORDS = ("none", "true", "false")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> PipelineError:
        pos = self.pos if pos is None else pos
        caret = " " * pos + "^"
        return PipelineError(f"{message} at position {pos}\n  {self.text}\n  {caret}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            got = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected {char!r}, found {got}")
        self.pos += 1

    def name(self, what: str) -> str:
        m = _NAME.match(self.text, self.pos)
        if not m:
            got = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected {what}, found {got}")
        self.pos = m.end()
        return m.group()

    def value(self) -> str | list[str]:
        if self.peek() == '"':
            start = self.pos
            self.pos += 1
            out = []
            while True:
                ch = self.peek()
                if not ch:
                    raise self.fail("unterminated quoted value", start)
                self.pos += 1
                if ch == "\\":
                    out.append(self.peek())
                    self.pos += 1
                elif ch == '"':
                    return _Quoted("".join(out))
                else:
                    out.append(ch)
        items = []
        while True:
            m = _BARE.match(self.text, self.pos)
            if not m:
                raise self.fail("expected an option value")
            items.append(m.group())
            self.pos = m.end()
            if self.peek() != ",":
                break
            self.pos += 1
        return items[0] if len(items) == 1 else items

    def pipeline(self) -> list[Pass]:
        passes = []
        self.skip_ws()
        if not self.peek():
            raise self.fail("empty pipeline: name at least one pass")
        while True:
            passes.append(self.one_pass())
            self.skip_ws()
            if not self.peek():
                return passes
            self.expect(",")
            self.skip_ws()

    def one_pass(self) -> Pass:
        start = self.pos
        name = self.name("a pass name")
        if name not in _REGISTRY:
            raise self.fail(
                f"unknown pass {name!r}{did_you_mean(name, _REGISTRY)}; known passes: "
                f"{', '.join(sorted(_REGISTRY))}",
                start,
            )
        cls = _REGISTRY[name]
        fields = option_fields(cls)
        kwargs: dict[str, Any] = {}
        self.skip_ws()
        if self.peek() == "{":
            self.pos += 1
            while True:
                self.skip_ws()
                if not self.peek():
                    raise self.fail(f"missing '}}' to close the options of pass {name!r}")
                if self.peek() == "}":
                    self.pos += 1
                    break
                key_pos = self.pos
                key = self.name("an option name")
                if key not in fields:
                    known = ", ".join(fields) or "none"
                    raise self.fail(
                        f"pass {name!r} has no option {key!r}{did_you_mean(key, fields)}; its options: {known}",
                        key_pos,
                    )
                if key in kwargs:
                    raise self.fail(f"option {key!r} given twice", key_pos)
                self.expect("=")
                value_pos = self.pos
                raw = self.value()
                try:
                    kwargs[key] = _from_text(raw, fields[key])
                except ValueError as exc:
                    raise self.fail(f"option {key!r} of pass {name!r}: {exc}", value_pos) from None
        missing = [f for f in required_options(cls) if f not in kwargs]
        if missing:
            needed = " ".join(f"{f}=…" for f in missing)
            raise self.fail(f"pass {name!r} needs {needed}, e.g. {name}{{{needed}}}", start)
        try:
            made = cls(**kwargs)
        except TypeError as exc:
            raise self.fail(f"pass {name!r}: {exc}", start) from None
        except FxlabError as exc:
            raise self.fail(f"pass {name!r}: {exc}", start) from None
        object.__setattr__(made, _EXPLICIT, tuple(kwargs))
        return made


def option_fields(cls: type[Pass]) -> dict[str, Any]:
    """Option name → declared type, for a pass class's init fields."""
    if not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # annotations naming local types: treat their text as strings
        hints = {}
    return {f.name: hints.get(f.name, str) for f in dataclasses.fields(cls) if f.init}


def required_options(cls: type[Pass]) -> list[str]:
    """The options a pass class has no default for."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _from_text(raw: str | list[str], annotation: Any) -> Any:
    """Convert an option's text to the option's declared type."""
    allowed = text_types(annotation)
    if isinstance(raw, list):
        if list not in allowed:
            raise ValueError(f"takes one value, got a list {','.join(raw)!r}")
        return [_scalar_from_text(r, allowed) for r in raw]
    return _scalar_from_text(raw, allowed)


def _scalar_from_text(raw: str, allowed: set[type]) -> Any:
    if isinstance(raw, _Quoted):
        if str not in allowed:
            raise ValueError(f"expected {' or '.join(sorted(t.__name__ for t in allowed))}, got a quoted string")
        return str(raw)
    if type(None) in allowed and raw == "none":
        return None
    if bool in allowed and raw in ("true", "false"):
        return raw == "true"
    if int in allowed and re.fullmatch(r"[+-]?\d+", raw):
        return int(raw)
    if float in allowed:
        try:
            return float(raw)
        except ValueError:
            pass
    if str in allowed:
        return raw
    names = " or ".join(sorted(t.__name__ for t in allowed if t is not list))
    raise ValueError(f"expected {names}, got {raw!r}")


def text_types(annotation: Any) -> set[type]:
    """The types an option's text can become: bool, int, float, str, None, and list of those."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        out: set[type] = set()
        for arg in typing.get_args(annotation):
            out |= text_types(arg)
        return out
    if origin in (list, tuple, Sequence):
        return {list} | text_types(typing.get_args(annotation)[0] if typing.get_args(annotation) else str)
    if annotation in (bool, int, float, str, type(None)):
        return {annotation}
    return {str}  # selectors, callables, modules and other rich types: their text is a name


def _to_text(value: Any, key: str, owner: Pass) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value and _BARE.fullmatch(value) and not _reads_as_other_type(value):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, str) and _BARE.fullmatch(v) and not _reads_as_other_type(v) for v in value
    ):
        return ",".join(value)
    raise PipelineError(
        f"option {key}={value!r} of pass {owner.label()!r} has no text form; "
        "pass it as an object to fxlab.apply instead of pipeline text"
    )


def _reads_as_other_type(text: str) -> bool:
    """Whether a bare word would parse as a keyword or number rather than this string."""
    if text in _KEYWORDS:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_pass(p: Pass) -> str:
    """One pass in pipeline text: its name and the options it was given or that differ from defaults."""
    if not p.name or _REGISTRY.get(p.name) is not type(p):
        raise PipelineError(f"{type(p).__name__} is not a registered pass, so it has no pipeline text")
    options = p.options()
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(p)  # type: ignore[arg-type]
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
    } if dataclasses.is_dataclass(p) else {}
    explicit = [k for k in getattr(p, _EXPLICIT, ()) if k in options]
    keys = explicit + [k for k in options if k not in explicit and (k not in defaults or options[k] != defaults[k])]
    if not keys:
        return p.name
    return p.name + "{" + " ".join(f"{k}={_to_text(options[k], k, p)}" for k in keys) + "}"


def format_pipeline(passes: Iterable[Pass]) -> str:
    """A list of passes as pipeline text; ``parse_pipeline(format_pipeline(ps)) == ps``."""
    return ",".join(format_pass(p) for p in passes)


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into pass objects.

    >>> import fxlab
    >>> ps = fxlab.parse_pipeline("insert-relu{after=layer3},insert-activation{after=layer2 fn=gelu}")
    >>> fxlab.format_pipeline(ps)
    'insert-relu{after=layer3},insert-activation{after=layer2 fn=gelu}'
    """
    if not isinstance(text, str):
        raise PipelineError(f"pipeline text must be a string, got {type(text).__name__}")
    return _Parser(text).pipeline()


def as_passes(passes: str | Pass | Iterable[Pass]) -> list[Pass]:
    """Pipeline text, one pass, or a list of passes → a list of passes (validated)."""
    if isinstance(passes, str):
        return parse_pipeline(passes)
    if isinstance(passes, Pass):
        return [passes]
    if not isinstance(passes, Iterable):
        raise PipelineError(
            f"passes must be pipeline text, a pass or a list of passes, got {type(passes).__name__}"
        )
    out = list(passes)
    for i, p in enumerate(out):
        if not isinstance(p, Pass):
            raise PipelineError(
                f"pipeline item {i} is {type(p).__name__}, not an fxlab.Pass; "
                "wrap plain functions in a Pass subclass"
            )
    return out


