"""Tests for nanoseek/recipe/ (`nanoseek run`): the smoke recipe end to end, what it writes, that every stage's
checkpoint serves and exports, and that a second run redoes nothing; the quick recipe as a slow test."""
import dataclasses
import json
import re
import time

import pytest

from nanoseek.recipe import runner
from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.cli import main
from nanoseek.data.prompts import load_prompt_format
from nanoseek.errors import ConfigError
from nanoseek.infer import Engine, SamplingParams

STAGES = ["pretrain", "r1-zero", "sft", "grpo", "rejection-sft", "grpo-final", "pretrain-student", "distill",
          "quantize-int8", "quantize-int4"]
STUDENTS = ("pretrain-student", "distill")
TRAINED_ALONE = ("pretrain", "r1-zero", "sft", "grpo", "grpo-final", "pretrain-student")  # no sampling before
FIELDS = {"name", "accuracy", "format_rate", "mean_length", "seconds", "tokens", "flops", "mfu", "device_hours",
          "checkpoint"}


def check_report(out):
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert [s["name"] for s in stages] == STAGES
    for s in stages:
        assert FIELDS <= set(s), s["name"]
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["format_rate"] <= 1 and s["seconds"] > 0
    report = (out / "report.md").read_text()
    assert "| stage | from | accuracy | format rate | mean length | wall time | tokens processed |" in report
    assert "![r1-zero reward](r1-zero/reward.png)" in report and (out / "r1-zero" / "reward.png").is_file()
    assert "![r1-zero heldout](r1-zero/heldout.png)" in report and "![r1-zero length](r1-zero/length.png)" in report
    for name in ("r1-zero", "grpo", "grpo-final"):           # R1 Table 2: every RL stage at its start and its end
        assert f"| {name} | start |" in report and f"| {name} | end |" in report
    for s in stages:  # each checkpoint carries the prompt it was evaluated with, which `nanoseek generate` uses
        shown = {"chat": "chat template", "r1-zero": "R1-Zero template"}
        assert shown.get(load_prompt_format(s["checkpoint"]), load_prompt_format(s["checkpoint"])) == s["eval_prompt"]
    for s in stages:  # every plot a stage drew is in the report
        for plot in (out / s["name"]).glob("*.png"):
            assert f"]({s['name']}/{plot.name})" in report, plot
    check_stage_reports_agree(out, stages, report)
    zero = next(s for s in stages if s["name"] == "r1-zero")
    assert zero["eval_prompt"] == "R1-Zero template" and "heldout_pass@2" in zero["heldout_end"]
    return stages


def check_stage_reports_agree(out, stages, report):
    """A training stage's own report.md and the run's report.md give the same tokens, MFU and measured peak."""
    rows = {}
    for line in report.splitlines():  # the stages' table: each stage's first row
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line.split(" | "))
    peak = re.search(r"measured once in the session that trained the stage \(([\d.]+) GFLOP/s\)", report)
    assert peak, "the run's report gives one measured peak"
    for s in stages:
        if s["name"] not in TRAINED_ALONE:
            continue
        own = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1].rstrip(" |")
               for line in (out / s["name"] / "report.md").read_text().splitlines() if line.startswith("| ")}
        assert own["tokens"].split(" ")[0] == rows[s["name"]][6] == f"{s['tokens']:,}", s["name"]
        assert own["MFU"].split(" of the")[0] == rows[s["name"]][8], s["name"]
        assert f"({peak[1]} GFLOP/s)" in own["MFU"], s["name"]


def test_smoke_run_end_to_end_and_again(tmp_path, capsys):
    out = tmp_path / "r1"
    main(["run", "--smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    for k, name in enumerate(STAGES, 1):    # where the run is, and from the second stage on, how long it has left
        assert f"== stage {k}/{len(STAGES)}: {name}" + ("; an estimate" if k == 1 else "; ") in printed
    assert printed.count("min in all (at the rates measured so far") == len(STAGES) - 1
    stages = check_report(out)
    for s in stages:
        engine = Engine(s["checkpoint"])
        assert len(engine.generate([[0, 5, 6]], SamplingParams(max_tokens=3, seed=0))[0]) >= 1
    for s in stages[:STAGES.index("distill") + 1]:  # the float checkpoints; the dense student exports as Llama
        save_checkpoint(load_checkpoint(s["checkpoint"]), tmp_path / "hf" / s["name"], format="hf")
        model_type = json.loads((tmp_path / "hf" / s["name"] / "config.json").read_text())["model_type"]
        assert model_type == ("llama" if s["name"] in STUDENTS else "deepseek_v3")
    student, int8, int4 = stages[-3:]
    assert student["parameters"] <= student["teacher_parameters"] / 4
    assert student["student"] == "pretrain-student"   # the student's own pretrained base, as R1 §2.4's students
    assert int4["weight_bytes"] < int8["weight_bytes"] < int8["init_weight_bytes"] / 3
    report = (out / "report.md").read_text()
    assert "- distill: a dense student of" in report and "- quantize-int4: GPTQ on 128 training problems" in report
    assert (out / "rejection" / "prompts.jsonl").is_file() and (out / "rejection" / "counts.json").is_file()
    capsys.readouterr()

    marks = {name: (out / name / "stage.json").stat().st_mtime_ns for name in STAGES}
    main(["run", "--smoke", "--out", str(out)])
    assert capsys.readouterr().out.count("done already") == len(STAGES)
    assert marks == {name: (out / name / "stage.json").stat().st_mtime_ns for name in STAGES}

    (out / "grpo-final" / "stage.json").unlink()        # trained but not evaluated: only the evaluation runs again
    main(["run", "--smoke", "--out", str(out)])
    assert "== grpo-final: evaluating" in capsys.readouterr().out
    check_report(out)

    with pytest.raises(SystemExit):
        main(["run", "--quick", "--out", str(out)])
    assert "'smoke' run" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run(tmp_path):
    out = tmp_path / "r1"
    start = time.perf_counter()
    main(["run", "--quick", "--out", str(out)])
    stages = check_report(out)
    print(f"nanoseek run --quick: {(time.perf_counter() - start) / 60:.1f} min")
    grpo = next(s for s in stages if s["name"] == "grpo")
    assert grpo["format_rate"] >= 0.9


def test_rejection_questions_take_the_levels_in_turn_and_replay_mixes_in_cold_start_rows(tmp_path):
    from nanoseek.data.tasks import TASKS, verify
    from nanoseek.recipe.runner import rejection_prompts, with_replay
    from nanoseek.recipe.stages import RejectionSFT
    from nanoseek.train.rejection import RejectionConfig
    from nanoseek.train.sft import SFTConfig

    settings = RejectionSFT(10, RejectionConfig(checkpoint="", prompts=""), SFTConfig(), levels=(1, 3), replay=1.5)
    prompts = rejection_prompts(settings)
    assert len(prompts) == 10 and {p.task for p in prompts} == set(TASKS)
    level_one = rejection_prompts(dataclasses.replace(settings, levels=(1,), questions=5))
    assert prompts[0::2] == level_one                         # levels 1 and 3 in turn
    assert prompts[1::2] != level_one
    kept = tmp_path / "samples.jsonl"
    kept.write_text("".join(json.dumps(p.to_row() | {"reasoning": "mine"}) + "\n" for p in prompts[:4]))
    assert with_replay(kept, settings.replay, tmp_path / "train.jsonl") == 4 + 6
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert sum(r["reasoning"] == "mine" for r in rows) == 4 and all(verify(r, r["answer"]) for r in rows)
    assert [r["reasoning"] == "mine" for r in rows] != [True] * 4 + [False] * 6   # shuffled together


def test_an_out_folder_under_proc_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="cannot write the output folder /proc/nanoseek-run"):
        runner.run("/proc/nanoseek-run", "smoke")
