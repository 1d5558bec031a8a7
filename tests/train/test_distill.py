"""Tests for nanoseek/train/distill.py: which teacher completions are kept, the logit-distillation loss against a
plain computation, a whole run on a tiny teacher, and the distilled Llama-shaped student in transformers."""
import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import SMALL

import nanoseek.train.rejection as rejection
from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.cli import main
from nanoseek.data.tasks import generate_mix
from nanoseek.errors import DataError
from nanoseek.infer import Engine, SamplingParams
from nanoseek.model import Transformer
from nanoseek.data.sources import DIFFICULTY
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.train.distill import (PROMPT_SEED, TRACES, DistillConfig, distill, distill_loss, kd_loss,
                                    teacher_traces)
from nanoseek.data.prompts import prompt_ids
from nanoseek.train.loop import TrainConfig

TOKENIZER = default_tokenizer()
FAST = TrainConfig(max_steps=2, batch_size=2, warmup_steps=0, save_every=1)
PROBLEMS = generate_mix(2, PROMPT_SEED, "train", DIFFICULTY)  # the questions a distill run with seed 0 asks


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random MoE teacher with the default tokenizer."""
    torch.manual_seed(0)
    model = Transformer(SMALL.replace(vocab_size=TOKENIZER.vocab_size, max_position_embeddings=256))
    path = tmp_path_factory.mktemp("teacher")
    save_checkpoint(model, path)
    TOKENIZER.save(path)
    return path


def completions(problem) -> list[tuple[str, bool]]:
    """Crafted teacher outputs for `problem` as (text, ended by end-of-sequence): a correct answer, the same again,
    a correct one with other reasoning, a wrong answer, no thinking, </think> twice, and a truncated correct one."""
    good = f"<think>\n{problem.reasoning}\n</think>\n\n{problem.answer}"
    other = f"<think>\nThe answer is {problem.answer}.\n</think>\n\n{problem.answer}"
    return [(good, True), (good, True), (other, True), (f"<think>\n{problem.reasoning}\n</think>\n\n12345678", True),
            (problem.answer, True), (f"{good}</think>", True), (good, False)]


class ScriptedEngine:
    """Stands in for the inference engine: request j gets the crafted completions of question j."""

    def __init__(self, model, config=None, tokenizer=None):
        self.prompts = []

    def add_request(self, prompt, params):
        self.prompts.append(prompt)
        return len(self.prompts) - 1

    def stream(self, request_ids):
        for r in request_ids:
            problem = next(p for p in PROBLEMS if prompt_ids(TOKENIZER, p, []) == self.prompts[r])
            for i, (text, finished) in enumerate(completions(problem)):
                ids = TOKENIZER.encode(text) + [TOKENIZER.eos_id] * finished
                yield SimpleNamespace(request_id=r, index=i, finish_reason="stop" if finished else "length",
                                      sequence=SimpleNamespace(output_ids=ids, tokens=self.prompts[r] + ids))


def test_only_verified_well_formed_distinct_completions_are_kept(teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(rejection, "Engine", ScriptedEngine)
    counts = teacher_traces(DistillConfig(teacher=str(teacher), questions=2, k=7), tmp_path, seed=0)
    rows = [json.loads(line) for line in (tmp_path / TRACES).read_text().splitlines()]
    expected = [(p.prompt, reasoning, p.answer) for p in PROBLEMS
                for reasoning in (p.reasoning, f"The answer is {p.answer}.")]
    assert [(r["prompt"], r["reasoning"], r["answer"]) for r in rows] == expected
    assert all(r["task"] == p.task for r, p in zip(rows, [p for p in PROBLEMS for _ in range(2)]))
    assert {k: counts[k] for k in ("kept", "duplicate", "incorrect", "format", "truncated")} == \
           {"kept": 4, "duplicate": 2, "incorrect": 2, "format": 4, "truncated": 2}
    assert teacher_traces(DistillConfig(teacher="elsewhere"), tmp_path, seed=0) == counts  # sampled once


def test_kd_loss_is_the_forward_kl_at_temperature_over_the_masked_tokens():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7) * 3, torch.randn(2, 5, 7) * 3
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=torch.bool)
    T = 2.0
    terms = []
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                p = torch.softmax(teacher[b, t] / T, -1)
                q = torch.softmax(student[b, t] / T, -1)
                terms.append(sum(p[v] * (torch.log(p[v]) - torch.log(q[v])) for v in range(7)))
    assert torch.allclose(kd_loss(student, teacher, mask, T), sum(terms) / len(terms), atol=1e-6)
    assert kd_loss(teacher, teacher, mask, T) == 0
    assert kd_loss(teacher, teacher + 5.0, mask, T).abs() < 1e-6  # a shift of every logit changes nothing


def test_distill_loss_mixes_sft_and_kl_and_is_pure_sft_against_itself():
    torch.manual_seed(0)
    model = Transformer(SMALL)
    ids = torch.randint(0, 64, (2, 9))
    labels = torch.where(torch.arange(9) >= 4, ids.roll(-1, 1), -100)
    batch = {"input_ids": ids, "labels": labels}
    same = distill_loss(model, temperature=2.0, alpha=0.3)(model, batch)
    assert same.logs["kd_loss"] == 0 and same.count == 10
    assert torch.allclose(same.loss, 0.7 * model.losses(ids, labels).main)
    other = Transformer(SMALL)
    out = distill_loss(other, temperature=2.0, alpha=0.3)(model, batch)
    kl = kd_loss(model(ids), other(ids), labels != -100, 2.0)
    assert torch.allclose(out.loss, 0.7 * model.losses(ids, labels).main + 0.3 * 4.0 * kl)


def test_a_random_teacher_has_nothing_to_distil_and_leaves_no_folder(teacher, tmp_path):
    config = DistillConfig(teacher=str(teacher), questions=2, k=2, max_new_tokens=4)
    with pytest.raises(DataError, match="kept none of its 4 completions"):
        distill(config, FAST, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_distilled_student_loads_and_exports_as_llama_with_the_same_greedy_output(teacher, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(rejection, "Engine", ScriptedEngine)
    config = DistillConfig(teacher=str(teacher), questions=2, k=7, logit_kd=True, seq_len=96)
    result = distill(config, FAST, tmp_path / "student")
    assert result.step == 2
    student = load_checkpoint(tmp_path / "student")
    assert student.config.attention_type == "gqa" and student.config.vocab_size == TOKENIZER.vocab_size
    logs = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all("kd_loss" in r and "sft_loss" in r for r in logs) and "val_loss" in logs[-1]
    assert "4 kept of 14 teacher completions" in (tmp_path / "student" / "report.md").read_text()

    save_checkpoint(student, tmp_path / "llama", format="hf")
    llama = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert type(llama).__name__ == "LlamaForCausalLM"
    prompt = prompt_ids(TOKENIZER, PROBLEMS[0], [])
    ours = Engine(student).generate([prompt], SamplingParams(temperature=0, max_tokens=16))[0]  # up to eos
    with torch.no_grad():
        theirs = llama.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                pad_token_id=TOKENIZER.eos_id)
    assert theirs[0, len(prompt):].tolist() == ours


@pytest.mark.parametrize("flags, words", [(["--teacher", "{tmp}/missing"], "teacher checkpoint"),
                                          (["--student", "no-such-preset"], "neither a preset"),
                                          (["--kd-alpha", "2"], "--kd-alpha 2.0")])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(teacher, tmp_path, capsys, flags, words):
    argv = ["distill", "--teacher", str(teacher), "--out", str(tmp_path / "out"),
            *(f.format(tmp=tmp_path) for f in flags)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()
