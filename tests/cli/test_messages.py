"""What the command says when it is used wrongly (errors that name what the user typed and point to what is expected,
judged by their one line), and help that agrees with what the command does."""
import json
import re

import pytest

from nanoseek.checkpoint import save_checkpoint
from nanoseek.cli import COMMANDS, build_parser, main
from nanoseek.config import PRESETS, ModelConfig
from nanoseek.data.sources import DIFFICULTY
from nanoseek.data.tasks import stream
from nanoseek.model import Transformer


def error_line(capsys, *argv) -> str:
    """The command's one line on stderr, after it exits with status 2."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "readme.txt"
    path.write_text("not a checkpoint\n")
    return path


@pytest.fixture
def run_folder(tmp_path):
    """A `nanoseek run` folder: checkpoints in its stage folders, none at its top."""
    out = tmp_path / "r1"
    for name in ("grpo", "grpo-final"):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text("{}")
    (out / "recipe.json").write_text('{"size": "default"}\n')
    return out


@pytest.mark.parametrize("command", [["eval"], ["quantize", "--to", "int8", "--out", "q"], ["generate", "hi"],
                                     ["info"]])
def test_a_file_where_a_checkpoint_folder_is_expected_is_called_a_file(capsys, text_file, command):
    argv = [command[0], text_file, *command[1:]] if command[0] != "generate" else ["generate", text_file, "hi"]
    err = error_line(capsys, *argv)
    assert f"{text_file} is a file; expected a checkpoint folder" in err
    assert "does not exist" not in err and "Expecting value" not in err and "tokenizer" not in err


def test_generate_on_a_missing_path_names_the_path_not_the_tokenizer(capsys, tmp_path):
    err = error_line(capsys, "generate", tmp_path / "nowhere", "hi")
    assert f"checkpoint folder {tmp_path / 'nowhere'} does not exist" in err and "tokenizer" not in err


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_a_run_folder_names_its_stage_folders(capsys, run_folder, command):
    err = error_line(capsys, command, run_folder, *(["hi"] if command == "generate" else []))
    assert f"{run_folder} is not a checkpoint but holds 2" in err and str(run_folder / "grpo-final") in err


def test_a_bad_value_is_reported_as_the_flag_typed(capsys, tmp_path):
    err = error_line(capsys, "pretrain", "--max-steps", "-3", "--out", tmp_path / "out")
    assert err.startswith("nanoseek: error: --max-steps -3: expected an int >= 1"), err
    assert "--gamma -1" in error_line(capsys, "sft", "--gamma", "-1", "--init", tmp_path, "--out", tmp_path / "o")


def test_an_unknown_task_lists_every_valid_one_as_text(capsys, tmp_path):
    err = error_line(capsys, "data", "nonsense", "--out", tmp_path / "x.jsonl")
    assert "expected one of arithmetic, expression, linear, countdown or mix" in err and "[" not in err
    assert not (tmp_path / "x.jsonl").exists()


def test_info_help_lists_the_presets_its_error_accepts(capsys):
    help = re.sub(r"\s+", " ", build_parser("info")._subparsers._group_actions[0].choices["info"].format_help())
    err = error_line(capsys, "info", "no-such-preset")
    for name in PRESETS:
        assert name in help and name in err


def command_parser(name: str):
    return build_parser(name)._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_flag_a_help_names_is_a_flag_of_its_command(name):
    parser = command_parser(name)
    flags = {option for action in parser._actions for option in action.option_strings}
    sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for action in sub:
        for child in action.choices.values():
            flags |= {o for a in child._actions for o in a.option_strings}
    helps = re.sub(r"`[^`]*`", "", " ".join(a.help or "" for a in parser._actions))  # `nanoseek sft --data`: another's
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", helps))
    assert named <= flags, f"{name} --help names {sorted(named - flags)}, which {name} does not have"


def test_prompts_is_a_file_wherever_it_is_a_flag():
    for name in ("grpo", "rejection-sample", "distill"):
        actions = {o: a for a in command_parser(name)._actions for o in a.option_strings}
        if "--prompts" in actions:
            assert actions["--prompts"].metavar in ("FILE", "STR"), name
    assert "--questions" in {o for a in command_parser("distill")._actions for o in a.option_strings}


def test_run_help_gives_its_times_in_minutes_on_the_cpu_they_were_measured_on():
    help = re.sub(r"\s+", " ", command_parser("run").format_help())
    assert "Xeon" in help and "AVX-512" in help and "(default: 30-60" not in help  # --quick is a switch
    ranges = re.findall(r"\b\d+-\d+\b(?! minutes)", help)
    assert re.search(r"\d+-\d+ minutes", help) and not ranges, ranges


def test_distill_reads_run_json_written_before_questions_was_named(tmp_path):
    from nanoseek.train.distill import DistillConfig
    from nanoseek.train.stage import from_dict

    assert from_dict(DistillConfig, {"teacher": "t", "prompts": 12}).questions == 12


def test_info_reports_flops_at_the_sequence_length_the_checkpoint_was_trained_at(tmp_path, capsys):
    config = ModelConfig.from_preset("tiny")
    save_checkpoint(Transformer(config), tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"stage": "pretrain", "pretrain": {"seq_len": 96}}))
    main(["info", str(tmp_path)])
    out = capsys.readouterr().out
    assert "at sequence length 96" in out and f"at sequence length {config.max_position_embeddings}" not in out


def test_data_defaults_to_the_level_the_recipe_trains_at(tmp_path, capsys):
    main(["data", "arithmetic", "--n", "5", "--out", str(tmp_path / "a.jsonl")])
    rows = [json.loads(line)["prompt"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    recipe_level = [p.prompt for p, _ in zip(stream("arithmetic", 0, "train", DIFFICULTY), range(5))]
    assert rows == recipe_level
    assert f"(default: {DIFFICULTY}" in command_parser("data").format_help()
