"""Tests for nanoseek/distributed.py, model/expert_parallel.py and train/dist_checkpoint.py: two gloo processes
under torchrun (`--nproc 2`) end with the weights of one process, with and without expert parallelism; distributed
checkpoints resume exactly on 2 ranks and in 1 process, and consolidate into one safetensors checkpoint; SFT and
GRPO run under torchrun."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from nanoseek import distributed
from nanoseek.cli import main
from nanoseek.config import ModelConfig
from nanoseek.errors import CheckpointError
from nanoseek.train.dist_checkpoint import consolidate

ROOT = Path(__file__).resolve().parents[2]
# the command, shortened sequences so that it runs in seconds
PRETRAIN = ["pretrain", "--preset", "tiny", "--max-steps", "6", "--seed", "5", "--batch-size", "8", "--seq-len", "64",
            "--save-every", "3"]


def nanoseek(*args) -> subprocess.CompletedProcess:
    """The command in a process of its own, eager as the suite is (tests/conftest.py)."""
    proc = subprocess.run([sys.executable, "-m", "nanoseek", *map(str, args), "--no-compile"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def worst_difference(a: Path, b: Path) -> float:
    """The largest relative difference ||a - b|| / ||a|| over the tensors of two checkpoints."""
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).norm() / x[k].norm().clamp(min=1e-12)) for k in x)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same pretraining in one process, in two, and in two with expert parallelism."""
    root = tmp_path_factory.mktemp("dist")
    nanoseek(*PRETRAIN, "--threads", "1", "--out", root / "one")
    nanoseek(*PRETRAIN, "--nproc", "2", "--out", root / "two")
    nanoseek(*PRETRAIN, "--nproc", "2", "--expert-parallel", "--out", root / "ep")
    return root


@pytest.mark.parametrize("run", ["two", "ep"])
def test_two_processes_end_with_the_weights_of_one(runs, run):
    assert worst_difference(runs / "one", runs / run) <= 1e-4
    lines = (runs / run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # rank 0 alone writes metrics
    assert (runs / run / "checkpoints" / "step-000006" / ".metadata").is_file()


def test_expert_parallelism_keeps_each_expert_on_one_rank(runs):
    """In the checkpoint, rank 0 wrote the first half of every MoE layer's experts (rows of the stacked matrices)
    and rank 1 the second half; FSDP-sharded weights come from both ranks."""
    metadata = FileSystemReader(runs / "ep" / "checkpoints" / "step-000006").read_metadata()
    experts, o_proj = "model.layers.1.mlp.experts.up_proj", "model.layers.1.self_attn.o_proj.weight"
    writers: dict[str, dict[int, str]] = {experts: {}, o_proj: {}}  # first row of each chunk -> the rank writing it
    for index, info in metadata.storage_data.items():
        if index.fqn in writers:
            writers[index.fqn][index.offset[0]] = info.relative_path.split("_")[2]  # __R_0.distcp -> R
    n = ModelConfig.from_preset("tiny").n_routed_experts
    assert metadata.state_dict_metadata[experts].size[0] == n
    assert writers[experts] == {0: "0", n // 2: "1"}
    assert set(writers[o_proj].values()) == {"0", "1"}


@pytest.mark.parametrize("run", ["two", "ep"])
def test_a_distributed_checkpoint_resumes_exactly_on_two_ranks_and_on_one(runs, tmp_path, run):
    for nproc in (2, 1):
        copy = tmp_path / f"resume-{nproc}"
        shutil.copytree(runs / run, copy)
        shutil.rmtree(copy / "checkpoints" / "step-000006")
        (copy / "model.safetensors").unlink()
        nanoseek("pretrain", "--resume", copy, *(["--nproc", "2"] if nproc == 2 else ["--threads", "1"]))
        difference = worst_difference(runs / run, copy)
        if nproc == 2:
            assert difference == 0.0  # bit for bit
        else:
            assert difference <= 1e-4


def test_consolidate_writes_one_checkpoint(runs, tmp_path, capsys):
    main(["checkpoint", "consolidate", str(runs / "ep" / "checkpoints" / "step-000006"), "--out", str(tmp_path / "c")])
    assert worst_difference(runs / "ep", tmp_path / "c") == 0.0
    assert (tmp_path / "c" / "tokenizer.json").is_file()
    with pytest.raises(CheckpointError, match="single process"):
        consolidate(runs / "one" / "checkpoints" / "step-000006")
    with pytest.raises(SystemExit):
        main(["checkpoint", "consolidate", str(runs / "ep"), "--out", str(tmp_path / "c")])
    assert "not empty" in capsys.readouterr().err


def test_sft_under_torchrun_matches_one_process(runs, tmp_path):
    sft = ["sft", "--init", runs / "one", "--max-steps", "3", "--batch-size", "8", "--seq-len", "128"]
    nanoseek(*sft, "--threads", "1", "--out", tmp_path / "one")
    nanoseek(*sft, "--nproc", "2", "--out", tmp_path / "two")
    assert worst_difference(tmp_path / "one", tmp_path / "two") <= 1e-4


def test_grpo_runs_under_torchrun(runs, tmp_path):
    out = tmp_path / "grpo"
    # a barely trained model rambles past 600 characters, so the length penalty tells its completions apart
    nanoseek("grpo", "--init", runs / "one", "--nproc", "2", "--max-steps", "2", "--prompts-per-step", "3",
             "--group-size", "4", "--max-new-tokens", "256", "--rewards", "length=1", "--heldout", "2", "--pass-k", "2",
             "--out", out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"heldout_pass@2"' in lines[0] and '"gen_tokens"' in lines[1]   # step 0: held-out
    assert '"heldout_accuracy"' in lines[2] and '"heldout_pass@2"' in lines[2]
    assert worst_difference(runs / "one", out) > 0  # the policy moved
    assert (out / "model.safetensors").is_file()


def test_bad_distributed_flags_are_one_line_errors(tmp_path, capsys):
    for argv, words in ((["pretrain", "--expert-parallel"], "--nproc"), (["pretrain", "--nproc", "0"], "--nproc 0")):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "x").exists()


def test_flag_removal_and_row_blocks():
    assert distributed.without_flag(["a", "--nproc", "2", "b", "--nproc=3"], "--nproc") == ["a", "b"]
    assert distributed.block([1, 2, 3]) == ([1, 2, 3], False)  # one process: everything
