"""Tests for the GRPO stage in nanoseek/train/grpo.py: it learns a toy reward, skips groups without signal, keeps
no reference model at β = 0, contains a failing reward, resumes a rollout exactly; the engine samples with the
weights of the latest update; the `grpo` command."""
import json

import pytest
import torch
from train_helpers import small_model

from nanoseek.checkpoint import load_checkpoint, save_checkpoint
from nanoseek.cli import main
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.train import rl as rl_module, rollouts as rollouts_module
from nanoseek.train import rewards
from nanoseek.data.sources import eval_problems
from nanoseek.train.default_tokenizer import default_tokenizer
from nanoseek.data.prompts import load_prompt_format, prompt_ids
from nanoseek.train.grpo import DEFAULT_TRAIN, GRPOConfig, grpo_loss_fn
from nanoseek.train.rl import grpo
from nanoseek.train.rollouts import Rollouts
from nanoseek.train.loop import accumulate_gradients, train
from nanoseek.train.metrics import read_metrics

TOKENIZER = default_tokenizer()
LOWER = torch.tensor([TOKENIZER.decode([i])[:1].islower() for i in range(TOKENIZER.vocab_size)])


def lowercase_start(completion, problem=None):
    """The toy task: a completion that starts with a lowercase letter earns 1 (about 40% of the vocabulary)."""
    return 1.0 if completion[:1].islower() else 0.0


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "toy", lowercase_start)


@pytest.fixture
def init(tmp_path):
    """A random small model with the default tokenizer's vocabulary, saved as a checkpoint."""
    path = tmp_path / "init"
    save_checkpoint(small_model(vocab_size=TOKENIZER.vocab_size, max_position_embeddings=128), path)
    TOKENIZER.save(path)
    return str(path)


def config(init, **changes):
    settings = dict(init=init, rewards="toy=1", group_size=8, prompts_per_step=4, max_new_tokens=1, beta=0.0,
                    heldout=0)
    return GRPOConfig(**{**settings, **changes})


def train_config(**changes):
    import dataclasses

    return dataclasses.replace(DEFAULT_TRAIN, **{"max_steps": 12, "lr": 0.1, "warmup_steps": 0, "save_every": 100,
                                                 **changes})


def lowercase_mass(path) -> float:
    """The policy's probability of a lowercase first token, averaged over a few prompts."""
    model = load_checkpoint(path).eval()
    prompts = [prompt_ids(TOKENIZER, p, []) for p in eval_problems(4)]
    with torch.no_grad():
        return sum(model(torch.tensor([p]))[0, -1].softmax(-1)[LOWER].sum().item() for p in prompts) / len(prompts)


def test_grpo_raises_the_reward_of_a_toy_task(toy, init, tmp_path):
    out = tmp_path / "out"
    grpo(config(init), train_config(), out)
    records = [r for r in read_metrics(out / "metrics.jsonl")]
    rewards_seen = [r["reward"] for r in records]
    assert sum(rewards_seen[-3:]) / 3 > sum(rewards_seen[:3]) / 3 + 0.2, rewards_seen
    assert lowercase_mass(out) > lowercase_mass(init) + 0.3
    for key in ("reward", "reward_std", "reward_toy", "reward_toy_std", "accuracy", "format_rate", "completion_len",
                "zero_var_groups", "gen_tokens_per_s", "update_tokens_per_s"):
        assert key in records[0], key
    assert "kl" in records[0] and "clip_frac" in records[0] and "entropy" in records[0]
    assert (out / "model.safetensors").is_file() and (out / "report.md").is_file()


def test_beta_zero_keeps_no_reference_model(toy, init, tmp_path, monkeypatch):
    built = []

    class Spy(Rollouts):
        def __init__(self, model, ref, *args):
            built.append(ref)
            super().__init__(model, ref, *args)

    monkeypatch.setattr(rl_module, "Rollouts", Spy)
    grpo(config(init, beta=0.0), train_config(max_steps=1), tmp_path / "a")
    grpo(config(init, beta=0.04), train_config(max_steps=1), tmp_path / "b")
    assert built[0] is None
    assert built[1] is not None and not any(p.requires_grad for p in built[1].parameters())
    first = read_metrics(tmp_path / "b" / "metrics.jsonl")[0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference


def rollouts(init, **changes):
    model = load_checkpoint(init)
    c = config(init, **changes)
    ref = load_checkpoint(init).eval() if c.beta else None
    return model, Rollouts(model, ref, TOKENIZER, c, seed=0)


def test_zero_variance_groups_are_counted_and_skipped(init, monkeypatch):
    # only the arithmetic questions' completions differ in reward; the other tasks' groups all score 0
    monkeypatch.setitem(rewards.REWARDS, "toy",
                        lambda text, problem: lowercase_start(text) if problem.task == "arithmetic" else 0.0)
    _, source = rollouts(init, group_size=8, prompts_per_step=8)
    batch = next(source)
    figures = source.logs()
    learning = 8 - figures["zero_var_groups"]
    assert figures["zero_var_groups"] >= 6          # six of the eight questions are not arithmetic
    assert batch["input_ids"].shape[0] == 8 * learning
    assert batch["advantages"].abs().sum() > 0 if learning else True

    monkeypatch.setitem(rewards.REWARDS, "toy", lambda text, problem: 1.0)
    _, source = rollouts(init)
    batch = next(source)
    assert batch["input_ids"].shape[0] == 0 and source.logs()["zero_var_groups"] == 4


def test_a_reward_that_raises_scores_zero_and_the_run_goes_on(init, monkeypatch, capsys):
    def flaky(text, problem):
        if not text[:1].islower():
            raise ValueError("cannot judge")
        return 1.0

    monkeypatch.setitem(rewards.REWARDS, "toy", flaky)
    _, source = rollouts(init)
    next(source)
    next(source)
    figures = source.logs()
    assert figures["reward_errors"] > 0
    assert 0 < figures["reward"] < 1
    assert capsys.readouterr().err.count("reward 'toy' failed") == 1   # logged once, counted always


def test_a_rollout_resumes_exactly_between_its_updates(toy, init):
    _, source = rollouts(init, mu=2, beta=0.04)
    first = next(source)
    assert set(first) == {"input_ids", "labels", "advantages", "ref_logp", "old_logp"}
    state = json.loads(json.dumps(source.state_dict()))
    second = next(source)
    assert second is first                                   # μ = 2: the same rollout serves two updates
    _, resumed = rollouts(init, mu=2, beta=0.04)
    resumed.load_state_dict(state)
    again = next(resumed)
    for key in first:
        torch.testing.assert_close(again[key], first[key], rtol=0, atol=1e-6, msg=key)
    fresh = next(source)                                     # a new rollout after μ updates
    assert not torch.equal(fresh["input_ids"], first["input_ids"])


def test_micro_batches_give_the_gradient_of_the_whole_rollout(toy, init):
    for how in ("sequence", "token"):
        model, source = rollouts(init, max_new_tokens=6, group_size=4, loss_agg=how)
        batch = next(source)
        loss_fn = grpo_loss_fn(source.config)
        other = load_checkpoint(init)
        whole = accumulate_gradients(model.train(), [batch], loss_fn)
        halves = [dict(zip(batch, parts)) for parts in zip(*(v.split(5) for v in batch.values()))]
        parts = accumulate_gradients(other.train(), halves, loss_fn)
        assert whole.count == parts.count
        for (name, p), q in zip(model.named_parameters(), other.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=f"{how}: {name}")


def test_the_engine_samples_with_the_weights_of_the_latest_update(init):
    """Rollouts keep one engine for the whole run: after an optimizer step it must run the new weights."""
    model = load_checkpoint(init)
    engine = Engine(model, EngineConfig())
    prompts = [prompt_ids(TOKENIZER, p, []) for p in eval_problems(3)]
    greedy = SamplingParams(temperature=0, max_tokens=6)
    before = engine.generate(prompts, greedy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    model(torch.tensor([prompts[0]]))[0, -1].logsumexp(-1).backward()
    optimizer.step()
    after = engine.generate(prompts, greedy)
    assert after == Engine(model, EngineConfig()).generate(prompts, greedy)
    assert after != before


def fails(capsys, argv, *words):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_grpo_command(init, tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, ["grpo", "--init", init, "--out", out, "--loss-agg", "mean"], "--loss-agg 'mean': expected one of sequence, token")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--rewards", "accuracy=1,style=1"], "style")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--group-size", "1"], "--group-size 1")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--clip-eps-high", "0.1"], "--clip-eps-high 0.1")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--curriculum", "0.9,0.1"], "--curriculum band (0.9, 0.1)")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--curriculum", "high"], "--curriculum 'high'")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--template", "r1-zero", "--few-shot", "1"], "choose one")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--template", "plain"], "template 'plain'")
    fails(capsys, ["grpo", "--init", init, "--out", out, "--heldout", "5000"], "ask for at most")
    assert not out.exists()
    main(["grpo", "--init", init, "--out", str(out), "--max-steps", "2", "--group-size", "4", "--prompts-per-step",
          "2", "--max-new-tokens", "8", "--rewards", "format=1,length=0.1", "--threads", "1",
          "--clip-eps-high", "0.28", "--dynamic-sampling", "2", "--curriculum", "0.1,0.9", "--heldout", "4",
          "--pass-k", "2", "--eval-every", "1"])
    assert "grpo: 2 steps" in capsys.readouterr().out
    assert load_prompt_format(out) == "chat"   # the prompt it trained with, for `nanoseek generate`
    settings = json.loads((out / "run.json").read_text())["grpo"]
    assert settings["group_size"] == 4 and settings["curriculum"] == [0.1, 0.9] and settings["clip_eps_high"] == 0.28
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records[0], records[-1]:     # held-out pass@1 and pass@k at the start and the end
        assert 0 <= r["heldout_pass@1"] <= r["heldout_pass@2"] <= 1
    assert all(0 <= r["heldout_accuracy"] <= 1 and "heldout_self_check" in r for r in records)
    assert "heldout_pass@2" not in records[1] and records[1]["levels"] and "self_check" in records[1]
    main(["plot", str(out)])
    assert {"reward.png", "length.png", "policy.png", "heldout.png", "behaviour.png", "levels.png"} <= {
        p.name for p in out.iterdir()}


def test_a_rollout_without_signal_is_a_step_without_an_update(tmp_path):
    """The loop's side of skipping: an empty batch changes no weight, is not a failed step, and its source's
    figures still reach metrics.jsonl."""
    class NoSignal:
        def __next__(self):
            return {"input_ids": torch.zeros((0, 5), dtype=torch.long), "labels": torch.zeros((0, 5), dtype=torch.long)}

        def logs(self):
            return {"reward": 0.0, "zero_var_groups": 4}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = train_config(max_steps=3, max_bad_steps=1, batch_size=4)
    result = train(model, NoSignal(), grpo_loss_fn(GRPOConfig(rewards="format=1")), config, tmp_path)
    assert result.step == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert all(r["skipped"] and r["zero_var_groups"] == 4 and "update_tokens_per_s" in r for r in records)


def scripted(source, script):
    """Make `source` sample script[q] (G texts; a text ending in '…' is cut at max_new_tokens, the others end with
    end-of-sequence) as the completions of its question q, in place of the engine."""
    def sample(prompts, question):
        return [TOKENIZER.encode(text.rstrip("…")) + ([] if text.endswith("…") else [TOKENIZER.eos_id])
                for j in range(len(prompts)) for text in script[question + j]]
    source._sample = sample
    return source


def a_is_right(text, problem=None):
    return 1.0 if text.startswith("a") else 0.0


FLAT_RIGHT, FLAT_WRONG, MIXED = ["a", "a", "a", "a"], ["b", "b", "b", "b"], ["a", "b", "b", "b"]


def test_dynamic_sampling_refills_the_groups_without_signal(init, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "toy", a_is_right)
    monkeypatch.setattr(rollouts_module, "accuracy_reward", a_is_right)   # the groups are judged by their answers
    # 2 questions a step; round 1: q0 flat, q1 mixed; round 2: q2 flat, q3 mixed -> the step has its 2 groups
    script = [FLAT_RIGHT, MIXED, FLAT_WRONG, ["a", "a", "b", "b"], *[FLAT_WRONG] * 8]
    _, source = rollouts(init, group_size=4, prompts_per_step=2, dynamic_sampling=3, adv_scale="none")
    batch = next(scripted(source, script))
    figures = source.logs()
    assert (figures["sampling_rounds"], figures["groups"], figures["zero_var_groups"]) == (2, 2, 2)
    assert figures["reward"] == (4 + 1 + 0 + 2) / 16                   # over every completion sampled
    # advantages r - mean: q1 [0.75, -0.25 x3], q3 [0.5, 0.5, -0.5, -0.5]
    assert sorted(batch["advantages"].tolist()) == sorted([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    assert source.questions == 4
    batch = next(source)                                                # q4..q9 all flat: 3 rounds, the cap
    assert source.logs()["sampling_rounds"] == 3 and batch["input_ids"].shape[0] == 0 and source.questions == 10

    _, plain = rollouts(init, group_size=4, prompts_per_step=2, adv_scale="none")   # without: q0 dropped only
    batch = next(scripted(plain, script))
    assert plain.logs()["sampling_rounds"] == 1 and batch["input_ids"].shape[0] == 4 and plain.questions == 2

    # a format reward varies where every answer is wrong: dynamic sampling still drops such a group
    monkeypatch.setitem(rewards.REWARDS, "toy", lambda text, problem=None: float(text.startswith("b")) / 2)
    _, source = rollouts(init, group_size=4, prompts_per_step=2, dynamic_sampling=2)
    batch = next(scripted(source, [["b", "c", "c", "c"], MIXED, ["c", "c", "b", "c"], FLAT_WRONG]))
    assert source.logs()["groups"] == 1 and batch["input_ids"].shape[0] == 4      # q1 only: its answers differ


def test_overlong_filtering_masks_truncated_completions(init, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "toy", a_is_right)
    script = [["a", "b", "a…", "b…"]] * 4      # the third and fourth completions are cut at max_new_tokens
    for masked, rows, advantages in ((False, 4, [0.5, -0.5, 0.5, -0.5]), (True, 2, [0.5, -0.5])):
        _, source = rollouts(init, group_size=4, prompts_per_step=1, adv_scale="none", mask_truncated=masked)
        batch = next(scripted(source, script))
        # the group's mean counts the truncated completions (DAPO §3.4 masks their loss, not their reward)
        assert batch["input_ids"].shape[0] == rows
        assert sorted(batch["advantages"].tolist()) == sorted(advantages)
        assert source.logs()["truncated"] == 0.5


def test_the_curriculum_moves_each_task_by_its_pass_rate(init, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "toy", a_is_right)
    monkeypatch.setattr(rollouts_module, "accuracy_reward", a_is_right)   # the pass rate is the verifier's
    # 4 questions a step, one of each task: arithmetic always right, countdown always wrong, the others mixed
    script = [FLAT_RIGHT, MIXED, MIXED, FLAT_WRONG] * 4
    _, source = rollouts(init, group_size=4, prompts_per_step=4, curriculum=(0.1, 0.9), difficulty=2,
                         curriculum_window=4)
    scripted(source, script)
    next(source)
    figures = source.logs()
    assert figures["level_mix"] == {"2": 1.0}
    assert figures["levels"] == {"arithmetic": 3, "expression": 2, "linear": 2, "countdown": 1}
    state = json.loads(json.dumps(source.state_dict()))
    second = next(source)
    assert source.logs()["level_mix"] == {"1": 0.25, "2": 0.5, "3": 0.25}
    assert source.logs()["levels"] == {"arithmetic": 4, "expression": 2, "linear": 2, "countdown": 1}
    assert source.drawn == {"arithmetic/2": 1, "expression/2": 2, "linear/2": 2, "countdown/2": 1,
                            "arithmetic/3": 1, "countdown/1": 1}
    _, resumed = rollouts(init, group_size=4, prompts_per_step=4, curriculum=(0.1, 0.9), difficulty=2,
                          curriculum_window=4)
    resumed.load_state_dict(state)
    again = next(scripted(resumed, script))
    assert resumed.logs()["levels"] == source.logs()["levels"] and resumed.drawn == source.drawn
    assert torch.equal(again["input_ids"], second["input_ids"])     # the same questions, at the same levels
