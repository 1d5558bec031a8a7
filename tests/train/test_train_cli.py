"""Tests for the `pretrain`, `sft`, `eval` and `plot` commands in nanoseek/cli.py: bad input, exact resume after
SIGKILL, and smoke runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import small_model

from nanoseek.checkpoint import save_checkpoint
from nanoseek.cli import COMPILING, main
from nanoseek.config import ModelConfig
from nanoseek.data.prompts import load_prompt_format
from nanoseek.model import Transformer
from nanoseek.train.default_tokenizer import default_tokenizer

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--seq-len", "32", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n\n".join(f"Document {i}: the sum of {i} and {2 * i} is {3 * i}, and that is all." for i in range(200)))
    return path


def nanoseek(*args, **kwargs):
    """The command in a process of its own, eager as the suite is (tests/conftest.py) when it trains or decodes."""
    return subprocess.run([sys.executable, "-m", "nanoseek", *eager(args)], cwd=ROOT, capture_output=True, text=True,
                          **kwargs)


def eager(args) -> list[str]:
    return [*map(str, args), *(["--no-compile"] if args[0] in COMPILING else [])]


def fails(capsys, argv, *words):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, text_file):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    fails(capsys, ["pretrain", "--data", tmp_path / "missing.txt", "--out", out], "missing.txt", "does not exist")
    fails(capsys, ["pretrain", "--data", empty, "--out", out], "empty.txt", "no documents")
    fails(capsys, ["pretrain", "--data", text_file, "--lr", "-1", "--out", out], "--lr -1.0: expected a number > 0")
    fails(capsys, ["sft", "--data", tmp_path / "missing.jsonl", "--init", tmp_path, "--out", out], "missing.jsonl")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(ModelConfig().to_dict()))
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    fails(capsys, ["sft", "--init", corrupt, "--out", out], "corrupt")
    other = tmp_path / "other"
    save_checkpoint(small_model(), other)
    fails(capsys, ["pretrain", "--init", other, "--data", text_file, "--out", out], "another shape", "vocab_size")
    fails(capsys, ["sft", "--resume", tmp_path / "nothing"], "cannot resume")
    fails(capsys, ["eval", other, "--data", tmp_path / "missing.jsonl"], "missing.jsonl")
    fails(capsys, ["eval", corrupt], "corrupt")
    fails(capsys, ["eval", other, "--n", "5000"], "problems at difficulty 1 number only", "at most")
    assert not out.exists()


def test_an_existing_run_is_not_overwritten(tmp_path, capsys, text_file):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    fails(capsys, ["pretrain", "--data", text_file, "--out", out], "not empty", "--resume")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"] and (out / "model.safetensors").read_bytes() == b"precious"


def test_a_subprocess_error_has_no_traceback(tmp_path):
    result = nanoseek("pretrain", "--lr", "-0.1", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip() == "nanoseek: error: --lr -0.1: expected a number > 0"
    assert not (tmp_path / "out").exists()


def test_resume_after_sigkill_is_bit_identical(tmp_path, text_file):
    args = ["pretrain", "--data", text_file, *FAST, "--max-steps", "40", "--save-every", "4", "--lr", "1e-2"]
    straight = nanoseek(*args, "--out", tmp_path / "a")
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "nanoseek", *eager(args), "--out", killed], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-000008").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "killed after it finished: nothing was tested"
    resumed = nanoseek("pretrain", "--resume", killed, "--threads", "1")  # same threads: same float sums
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert load_prompt_format(killed) == "1-shot"   # a base model: worked problems before the question


def test_sft_eval_and_plot_smoke(tmp_path, text_file, capsys):
    base = tmp_path / "base"
    torch.manual_seed(0)
    save_checkpoint(Transformer(ModelConfig.from_preset("tiny")), base)
    default_tokenizer().save(base)
    main(["sft", "--init", str(base), "--out", str(tmp_path / "sft"), "--max-steps", "2", "--batch-size", "2", "--threads", "1"])
    run = tmp_path / "sft"
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "report.md", "run.json"} <= \
        {p.name for p in run.iterdir()}
    assert load_prompt_format(run) == "chat"
    capsys.readouterr()
    main(["eval", str(run), "--n", "4", "--max-new-tokens", "4", "--samples", "2", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert {"accuracy", "format_rate", "mean_response_tokens", "pass@2", "maj@2", "mtp_accuracy", "mtp_agreement"} <= set(figures)
    main(["eval", str(base), "--n", "4", "--max-new-tokens", "4", "--few-shot", "2"])
    assert "2-shot" in capsys.readouterr().out
    main(["plot", str(run)])
    assert {"loss.png", "lr.png", "expert_load.png", "throughput.png"} <= {p.name for p in run.iterdir()}


def test_out_spelled_with_dotdot_cannot_overwrite_a_run(tmp_path, capsys, text_file):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"precious")
    dotdot = tmp_path / "runs" / "missing" / ".." / "r1"
    fails(capsys, ["pretrain", "--data", text_file, "--out", dotdot, "--max-steps", "1", *FAST], "not empty", "r1")
    fails(capsys, ["checkpoint", "export", run, "--out", dotdot], "not empty")
    assert (run / "model.safetensors").read_bytes() == b"precious" and not (tmp_path / "runs" / "missing").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, text_file):
    (tmp_path / "file").write_text("x")
    for out in ("/proc/nanoseek-run", tmp_path / "file" / "run"):
        fails(capsys, ["pretrain", "--data", text_file, "--out", out, "--max-steps", "1", *FAST], "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
