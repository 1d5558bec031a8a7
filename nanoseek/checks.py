"""The one check of a config dataclass's fields: each of the type its annotation names (an int is no bool, a float
a finite number, a tuple holds items of its types, None only where the annotation allows it), then within the rule
the config gives it: ">= 1", "> 0", "in [0, 1]", "in (0, 1]", or a tuple of the allowed values. A bad value is one
ConfigError naming the field and the value, as `<field> <value>: expected <what>` (the CLI puts the flag's name in
place of the field's)."""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
import types
import typing

from nanoseek.errors import ConfigError, NanoseekError

COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
NOUNS = {int: "an int", float: "a number", bool: "a bool", str: "a string", dict: "an object"}


def check_fields(config, rules: dict[str, str | tuple], default: str | None = None,
                 error: type[NanoseekError] = ConfigError) -> None:
    """Check every field of dataclass instance `config`: its type, then its rule (`default` for numbers without
    one); a bad one raises `error`."""
    for name, kind in _hints(type(config)).items():
        value = getattr(config, name)
        if not _is(value, kind):
            raise error(f"{name} {value!r:.80}: expected {_noun(kind)}")
        rule = rules.get(name, default if _base(kind) in (int, float) else None)
        if value is None or rule is None:
            continue
        if isinstance(rule, tuple):
            if value not in rule:
                raise error(f"{name} {value!r:.80}: expected one of {', '.join(map(str, rule))}")
        elif not within(value, rule):
            raise error(f"{name} {value!r:.80}: expected {NOUNS[_base(kind)]} {rule}")


def within(value: float, rule: str) -> bool:
    """`value` meets `rule`: ">= 1", "> 0", "in [0, 1]", "in (0, 1]" and the like."""
    if rule.startswith("in "):
        low, high = (float(x) for x in rule[4:-1].split(","))
        return (value >= low if rule[3] == "[" else value > low) and (value <= high if rule[-1] == "]" else value < high)
    op, bound = rule.split()
    return COMPARE[op](value, float(bound))


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _options(kind) -> tuple:
    """The types a value of annotation `kind` may have: `int | None` -> (int, NoneType)."""
    return typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)


def _base(kind):
    """The annotation without its None: `int | None` -> int."""
    return next(k for k in _options(kind) if k is not type(None))


def _is(value, kind) -> bool:
    if value is None:
        return type(None) in _options(kind)
    kind = _base(kind)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        items = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return isinstance(value, tuple) and len(value) == len(items) and all(map(_is, value, items))
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _noun(kind) -> str:
    base = _base(kind)
    if typing.get_origin(base) is tuple:
        noun = "a tuple of " + ", ".join("..." if a is Ellipsis else NOUNS.get(a, "?") for a in typing.get_args(base))
    else:
        noun = "a finite number" if base is float else NOUNS.get(base, f"a {getattr(base, '__name__', base)}")
    return noun + (" or none" if type(None) in _options(kind) else "")
