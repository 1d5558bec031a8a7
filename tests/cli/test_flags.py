"""The CLI's flags against the config dataclasses they come from: every default a flag applies, and every default
its help shows, is the dataclass field's (the stage's calibrated TrainConfig for the training flags)."""
import dataclasses
import re
from dataclasses import dataclass

import pytest

from nanoseek.cli import build_parser
from nanoseek.cli.flags import add_flags, field_help, from_flags, shown
from nanoseek.cli.serve import SAMPLING, SAMPLING_SKIP, SERVE_SKIP
from nanoseek.cli.train import TRAIN_SKIP, stage_defaults
from nanoseek.errors import ConfigError
from nanoseek.infer import EngineConfig, SamplingParams
from nanoseek.serve import ServeConfig
from nanoseek.train.evaluate import EvalConfig
from nanoseek.train.rejection import RejectionConfig

DEFAULT = re.compile(r"\(default: ([^()]*(?:\([^()]*\))?[^()]*)\)$")


def subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices


def shown_default(action) -> str | None:
    m = DEFAULT.search(" ".join((action.help or "").split()))
    return m[1] if m else None


@pytest.mark.parametrize("stage", list(TRAIN_SKIP))
def test_stage_flags_take_and_show_the_dataclass_defaults(stage):
    parser = subparsers()[stage]
    _, config, train = stage_defaults(stage)
    args = parser.parse_args([])
    assert from_flags(args, config) == type(config)()        # no flag given: every field its dataclass default
    assert from_flags(args, train, skip=TRAIN_SKIP[stage]) == train
    actions = {a.dest: a for a in parser._actions}
    for defaults, skip in ((config, ()), (train, TRAIN_SKIP[stage])):
        for f in dataclasses.fields(defaults):
            if f.name in skip:
                assert f.name not in actions or actions[f.name].dest != f.name
                continue
            action = actions[f.name]
            assert action.default is None, f.name                  # left out, the dataclass decides
            if isinstance(getattr(defaults, f.name), bool):       # a switch turns the default off or on
                assert action.const is not getattr(defaults, f.name)
                assert action.option_strings[0].startswith("--no-") == getattr(defaults, f.name)
            else:
                assert shown_default(action) == shown(getattr(defaults, f.name)), (stage, f.name, action.help)


@pytest.mark.parametrize("command,defaults", [
    ("eval", EvalConfig()), ("rejection-sample", RejectionConfig(checkpoint="", prompts="")),
    ("generate", SamplingParams(max_tokens=256, **SAMPLING)), ("chat", SamplingParams(max_tokens=2048, **SAMPLING)),
    ("generate", EngineConfig()), ("chat", EngineConfig()), ("serve", ServeConfig()), ("serve", EngineConfig())])
def test_other_generated_flags_show_the_dataclass_defaults(command, defaults):
    parser = subparsers()[command]
    actions = {a.dest: a for a in parser._actions}
    shown_fields = 0
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        hand_written = ("temperature", "checkpoint", "prompts", *SERVE_SKIP)
        if f.name in actions and f.name not in hand_written and not isinstance(value, bool):
            assert shown_default(actions[f.name]) == shown(value), f.name
            shown_fields += 1
    assert shown_fields >= 3
    if command in ("generate", "chat"):  # no flag given: the command's defaults exactly
        args = parser.parse_args(["ckpt"] + (["hi"] if command == "generate" else []))
        assert from_flags(args, defaults, skip=SAMPLING_SKIP + ("compile",)) == defaults


def test_every_hand_written_default_in_help_is_the_one_applied():
    for name, parser in subparsers().items():
        for action in parser._actions:
            text = shown_default(action)
            if text is not None and action.default is not None and action.default is not False:
                assert text.startswith(shown(action.default)), (name, action.dest, action.help, action.default)


@dataclass(frozen=True)
class Example:
    steps: int = 3                 # how many steps
    ratio: float = 0.5             # a share, continued
                                   # on the next line
    names: tuple[str, ...] = ()
    band: tuple[float, float] | None = None  # LOW,HIGH
    fast: bool = False             # go fast


def test_help_comes_from_the_comments_and_values_parse():
    import argparse

    assert field_help(Example) == {"steps": "how many steps", "ratio": "a share, continued on the next line",
                                   "band": "LOW,HIGH", "fast": "go fast"}
    parser = argparse.ArgumentParser()
    add_flags(parser, Example())
    args = parser.parse_args(["--steps", "5", "--names", "a", "--names", "b", "--band", "0.1,0.9", "--fast"])
    assert from_flags(args, Example()) == Example(steps=5, names=("a", "b"), band=(0.1, 0.9), fast=True)
    assert from_flags(parser.parse_args([]), Example()) == Example()
    with pytest.raises(ConfigError, match="--band 'high'"):
        parser.parse_args(["--band", "high"])
    with pytest.raises(ConfigError, match="--steps 'x': expected an int"):
        parser.parse_args(["--steps", "x"])
