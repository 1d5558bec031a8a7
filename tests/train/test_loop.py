"""Tests for nanoseek/train/loop.py: accumulation, non-finite skipping, metrics, checkpoints, resume, Ctrl-C."""
import json
import os
import signal

import pytest
import torch
from train_helpers import RandomBatches, small_model

from nanoseek.cost import flops_per_token
from nanoseek.errors import NanoseekError
from nanoseek.train.loop import StepLoss, TrainConfig, accumulate_gradients, compile_blocks, lm_loss, train
from nanoseek.train.run_folder import checkpoint_dirs


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def split(batch, size):
    return [dict(zip(batch, parts)) for parts in zip(*(v.split(size) for v in batch.values()))]


def test_accumulation_equals_one_big_batch():
    batch = next(RandomBatches(batch_size=8))
    one, four = small_model(), small_model()
    loss_fn = lm_loss(0.3, 1e-4)
    whole = accumulate_gradients(one.train(), [batch], loss_fn)
    parts = accumulate_gradients(four.train(), split(batch, 2), loss_fn)
    assert parts.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    assert parts.logs["mtp_loss"] == pytest.approx(whole.logs["mtp_loss"], rel=1e-5)
    g1, g4 = grads(one), grads(four)
    assert g1.keys() == g4.keys()
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_weights_micro_batches_by_target_tokens():
    """SFT batches mask different numbers of tokens per row: the mean is over all target tokens of the batch."""
    batch = next(RandomBatches(batch_size=4))
    batch["labels"] = batch["labels"].clone()
    batch["labels"][0, :12] = -100   # row 0 keeps 4 targets, the others 16
    one, two = small_model(), small_model()
    loss_fn = lm_loss(0.0, 0.0)      # the next-token cross-entropy alone: a mean over target tokens
    whole = accumulate_gradients(one.train(), [batch], loss_fn)
    parts = accumulate_gradients(two.train(), split(batch, 2), loss_fn)
    assert whole.count == parts.count == 4 + 3 * 16
    assert parts.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    for name, g in grads(one).items():
        torch.testing.assert_close(grads(two)[name], g, rtol=1e-4, atol=1e-6, msg=name)


def nan_on(steps):
    """lm_loss, except that the forward passes numbered in `steps` give NaN."""
    inner, calls = lm_loss(0.3, 1e-4), [0]

    def loss_fn(model, batch):
        calls[0] += 1
        out = inner(model, batch)
        if calls[0] in steps:
            return StepLoss(out.loss * float("nan"), out.count, out.logs)
        return out
    return loss_fn


def test_non_finite_loss_skips_the_step(tmp_path):
    model = small_model()
    config = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, warmup_steps=0, save_every=100)
    snapshots = []

    class Recording(RandomBatches):
        def __next__(self):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            return super().__next__()

    train(model, Recording(), nan_on({2, 3}), config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in records] == [False, True, True, False]
    assert records[1]["loss"] is None and records[0]["loss"] is not None
    for name, value in snapshots[1].items():  # steps 2 and 3 changed nothing, not even the routing bias
        assert torch.equal(snapshots[3][name], value), name


def test_too_many_non_finite_steps_abort(tmp_path):
    config = TrainConfig(max_steps=10, batch_size=4, max_bad_steps=3, save_every=100)
    with pytest.raises(NanoseekError, match="3 steps in a row"):
        train(small_model(), RandomBatches(), nan_on(set(range(2, 20))), config, tmp_path)


def test_metrics_line_per_step(tmp_path):
    config = TrainConfig(max_steps=3, batch_size=4, save_every=100, eval_every=2)
    result = train(small_model(), RandomBatches(), lm_loss(0.3, 1e-4), config, tmp_path,
                   evaluate=lambda model: {"val_loss": 1.5})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"step", "loss", "mtp_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "expert_load", "expert_tokens"} <= set(r)
        assert len(r["expert_load"]) == 2  # the MoE layer and the MTP block's MoE
        # tokens x top-k: 4 x 16 in the main model, 4 x 15 in the MTP block (the last position has no next token)
        assert [sum(layer) for layer in r["expert_tokens"]] == [4 * 16 * 2, 4 * 15 * 2]
    assert [("val_loss" in r) for r in records] == [False, True, True]
    assert result.step == 3 and result.tokens == 3 * 4 * 16 and 0 < result.mfu < 1
    # 6 N per token plus attention, MTP included (nanoseek.cost), whatever the device
    expected = flops_per_token(small_model().config, 16, mtp=True) * result.tokens
    assert result.flops == pytest.approx(expected)
    assert result.mfu == pytest.approx(result.flops / result.elapsed_s / result.peak_flops)


def test_zero_mtp_weight_skips_and_freezes_the_mtp_module(tmp_path):
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(max_steps=2, batch_size=4, save_every=100, mtp_weight=0.0)
    train(model, RandomBatches(), lm_loss(0.0, 1e-4), config, tmp_path)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("mtp.") for n in moved)
    assert any(n.startswith("layers.") for n in moved)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("mtp_loss" not in r for r in records)
    assert [sum(layer) for layer in records[-1]["expert_tokens"]] == [4 * 16 * 2, 0]  # the MTP block's MoE is idle


def test_resume_is_bit_identical_and_keeps_last_k(tmp_path):
    config = TrainConfig(max_steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, warmup_steps=2, save_every=2,
                         keep_last=2)
    straight = small_model()
    train(straight, RandomBatches(), lm_loss(0.3, 1e-4), config, tmp_path / "a")

    class Crash(RandomBatches):
        def __next__(self):
            if self.i == 5:
                raise RuntimeError("simulated crash")
            return super().__next__()

    with pytest.raises(RuntimeError):
        train(small_model(), Crash(), lm_loss(0.3, 1e-4), config, tmp_path / "b")
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step-000002", "step-000004"]
    resumed = small_model(seed=99)  # whatever it starts from, the checkpoint decides
    train(resumed, RandomBatches(), lm_loss(0.3, 1e-4), config, tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["step-000004", "step-000006"]
    lines = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_saves_and_stops(tmp_path):
    class Interrupting(RandomBatches):
        def __next__(self):
            if self.i == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return super().__next__()

    config = TrainConfig(max_steps=10, batch_size=4, save_every=100)
    before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN when started in the background
    result = train(small_model(), Interrupting(), lm_loss(0.3, 1e-4), config, tmp_path)
    assert result.interrupted and result.step == 3
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000003"]
    assert signal.getsignal(signal.SIGINT) is before    # the loop's own handler is gone again


def test_bf16_autocast_step_is_close_to_float32_and_silent(tmp_path, recwarn):
    """Under autocast the latent projections hand RMSNorm bf16 activations beside its float32 weight: no warning,
    and a loss within bf16's rounding of float32's."""
    losses = {}
    for bf16 in (False, True):
        config = TrainConfig(max_steps=1, batch_size=4, save_every=100, bf16=bf16)
        losses[bf16] = train(small_model(), RandomBatches(), lm_loss(0.3, 1e-4), config, tmp_path / str(bf16)).loss
    assert losses[True] == pytest.approx(losses[False], rel=0.02) and losses[True] != losses[False]
    assert not [str(w.message) for w in recwarn if "dtype" in str(w.message)]


def test_compiled_blocks_give_the_eager_gradients():
    """compile_blocks (TrainConfig.compile): each block's forward and backward compiled, dense, MoE (the grouped
    expert product) and MTP blocks alike; the loss and every gradient as the eager model's."""
    batch = next(RandomBatches(batch_size=4))
    eager, compiled = small_model(), small_model()
    compile_blocks(compiled)
    loss_fn = lm_loss(0.3, 1e-4)
    want = accumulate_gradients(eager.train(), [batch], loss_fn)
    got = accumulate_gradients(compiled.train(), [batch], loss_fn)
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-5)
    g_eager, g_compiled = grads(eager), grads(compiled)
    assert g_eager.keys() == g_compiled.keys() and any("experts" in name for name in g_eager)
    for name in g_eager:
        torch.testing.assert_close(g_compiled[name], g_eager[name], rtol=1e-4, atol=1e-6, msg=name)
