"""Tests for the `nanoseek data` command in nanoseek/cli.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanoseek.cli import main
from nanoseek.data.problem import split_of
from nanoseek.data.tasks import verify

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task", ["countdown", "mix"])
def test_writes_valid_rows(tmp_path, task):
    out = tmp_path / f"{task}.jsonl"
    main(["data", task, "--split", "eval", "--n", "24", "--seed", "3", "--difficulty", "3", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24
    for row in rows:
        assert {"prompt", "answer", "reasoning", "task"} <= set(row)
        assert verify(row, row["answer"]) and split_of(row["prompt"]) == "eval"
    assert {r["task"] for r in rows} == ({"countdown"} if task == "countdown" else {"arithmetic", "expression", "linear", "countdown"})
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind


def test_same_file_from_a_fresh_process(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    main(["data", "linear", "--n", "30", "--seed", "9", "--out", str(a)])
    subprocess.run([sys.executable, "-m", "nanoseek", "data", "linear", "--n", "30", "--seed", "9", "--out", str(b)],
                   cwd=ROOT, check=True, capture_output=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert a.read_bytes() == b.read_bytes()


def test_bad_task_exits_with_its_name(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["data", "sudoku", "--out", str(out)])
    assert e.value.code == 2 and "'sudoku'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
