"""Command-line flags generated from the config dataclasses, so that each dataclass is the one source of its flags'
defaults and help: a field `max_new_tokens: int = 160  # longest completion` becomes `--max-new-tokens N` with
the help "longest completion (default: 160)". The help is the comment after the field (and the comment lines
indented under it); the default shown is the field's value in the instance of defaults the command uses (a stage's
calibrated TrainConfig, say). A flag left out keeps that default: `from_flags` replaces only the fields given.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing

from nanoseek.errors import ConfigError, NanoseekError


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """The comment after each field of dataclass `cls`, continued by comment lines indented under it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: (tok.start[1], tok.string.lstrip("#").strip())
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign):
            continue
        line = node.end_lineno
        if line not in comments:
            continue
        column, text = comments[line]
        parts = [text]
        while line + 1 in comments and comments[line + 1][0] >= column and not lines[line].split("#")[0].strip():
            line += 1
            parts.append(comments[line][1])
        found[node.target.id] = " ".join(parts)
    return found


def flag_name(name: str, renamed: dict[str, str]) -> str:
    return "--" + renamed.get(name, name).replace("_", "-")


def shown(value) -> str:
    """A default as the help shows it."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _pair(kinds: tuple[type, ...], flag: str):
    def parse(text: str) -> tuple:
        parts = text.split(",")
        try:
            if len(parts) != len(kinds):
                raise ValueError
            return tuple(kind(part) for kind, part in zip(kinds, parts))
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected {len(kinds)} comma-separated "
                              f"{'/'.join(k.__name__ for k in kinds)} values") from None
    return parse


def _scalar(kind: type, flag: str):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected {'an' if kind is int else 'a'} {kind.__name__}") from None
    return parse


def add_flags(parser: argparse.ArgumentParser, defaults, skip: tuple[str, ...] = (),
              renamed: dict[str, str] | None = None) -> None:
    """A flag for each field of dataclass instance `defaults` but those in `skip`; `renamed` gives a field another
    flag name. Every flag's argparse default is None: the field keeps its value in `defaults` unless the flag is
    given."""
    cls, renamed = type(defaults), renamed or {}
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, value = flag_name(f.name, renamed), getattr(defaults, f.name)
        kind = hints[f.name]
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in args if a is not type(None))
            args = typing.get_args(kind)
        text = helps.get(f.name, "")
        help = f"{text} (default: {shown(value)})" if text else f"default: {shown(value)}"
        options = dict(dest=f.name, default=None, help=help.replace("%", "%%"))
        if kind is bool:  # a switch away from the default: --x when it is off, --no-x when it is on
            options.update(action="store_const", const=not value, help=(text or None) and text.replace("%", "%%"))
            flag = flag if not value else "--no-" + flag[2:]
        elif typing.get_origin(kind) is tuple and args[-1] is Ellipsis:
            options.update(action="append", type=_scalar(args[0], flag), metavar=args[0].__name__.upper())
        elif typing.get_origin(kind) is tuple:
            options.update(type=_pair(args, flag), metavar=",".join(a.__name__.upper() for a in args))
        else:
            options.update(type=_scalar(kind, flag), metavar=kind.__name__.upper())
        parser.add_argument(flag, **options)


def from_flags(args: argparse.Namespace, defaults, skip: tuple[str, ...] = (), renamed: dict[str, str] | None = None):
    """`defaults` with the fields whose flags were given replaced by their values. The dataclass's own check of a
    value speaks of its field (`max_steps -3: ...`); the error names the flag the user typed instead."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults)
             if f.name not in skip and getattr(args, f.name, None) is not None}
    try:
        return dataclasses.replace(defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    except NanoseekError as e:  # ConfigError, or InferenceError from the engine's dataclasses
        message = str(e)
        for name in given:
            message = re.sub(rf"(?<![-\w]){name}\b", flag_name(name, renamed or {}), message)
        raise type(e)(message) from None
