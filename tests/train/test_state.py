"""Tests for nanoseek/train/state.py: training checkpoints round-trip exactly and fail cleanly when damaged."""
import random

import pytest
import torch
from train_helpers import RandomBatches, small_model

from nanoseek.errors import CheckpointError
from nanoseek.train.loop import TrainConfig, accumulate_gradients, lm_loss, make_optimizer
from nanoseek.train.run_folder import latest_checkpoint
from nanoseek.train.state import load_training_state, save_training_state


def trained(seed=0):
    model = small_model(seed)
    optimizer = make_optimizer(model, TrainConfig())
    accumulate_gradients(model.train(), [next(RandomBatches())], lm_loss(0.3, 1e-4))
    optimizer.step()
    model.update_routing_bias(0.01)
    return model, optimizer


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, optimizer = trained()
    torch.manual_seed(7)
    random.seed(7)
    path = save_training_state(tmp_path, 1, model, optimizer, {"data": {"i": 3}}, keep_last=2)
    expected = (torch.rand(3), random.random())
    other, other_optimizer = trained(seed=1)
    trainer = load_training_state(path, other, other_optimizer)
    assert trainer["data"] == {"i": 3} and trainer["step"] == 1
    assert (torch.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    saved, restored = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys()
    for i in saved:
        assert all(torch.equal(saved[i][k], restored[i][k]) for k in saved[i])


def test_keeps_the_last_k(tmp_path):
    model, optimizer = trained()
    for step in (1, 2, 3):
        save_training_state(tmp_path, step, model, optimizer, {}, keep_last=2)
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003"]


def test_damaged_checkpoints_raise_checkpoint_error(tmp_path):
    model, optimizer = trained()
    path = save_training_state(tmp_path, 1, model, optimizer, {}, keep_last=2)
    (path / "state.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_state(path, model, optimizer)
    (path / "trainer.json").unlink()
    with pytest.raises(CheckpointError, match="trainer.json"):
        load_training_state(path, model, optimizer)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        latest_checkpoint(tmp_path / "elsewhere")


def test_another_shape_is_refused(tmp_path):
    model, optimizer = trained()
    path = save_training_state(tmp_path, 1, model, optimizer, {}, keep_last=2)
    bigger = small_model(hidden_size=48)
    with pytest.raises(CheckpointError, match="another shape"):
        load_training_state(path, bigger, make_optimizer(bigger, TrainConfig()))
