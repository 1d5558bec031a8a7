"""Pretraining (V3 report §4.1-4.2 in miniature): next-token prediction with the MTP objective on natural text
interleaved with worked synthetic problems, packed into fixed-length sequences with end-of-sequence separators.
A tenth of the text documents are laid out Prefix-Suffix-Middle (Fill-in-Middle, V3 §4.1, data/fim.py).

The text is the user's files or the standard library's docstrings; each epoch passes over its training split again
with a fresh draw of problems (seed * 1000 + epoch), so no problem document repeats between epochs. The batch
source's position is (epoch, the packer's documents consumed and offset): enough to rebuild the stream at the same
token on resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from nanoseek.checks import check_fields
from nanoseek.data.fim import FIM_RATE, fim_documents
from nanoseek.data.mix import SYNTHETIC_FRACTION, Packer, mix_documents
from nanoseek.data.sources import DIFFICULTY, check_text_files, heldout_sequences, split_text, text_source
from nanoseek.data.styles import DEFAULT_STYLES, parse_styles
from nanoseek.errors import ConfigError, DataError
from nanoseek.model import Transformer
from nanoseek.tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE, Tokenizer
from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import TrainResult, lm_loss
from nanoseek.train.stage import Plan, Stage, device_of, initial_model, run_stage, stage_tokenizer


@dataclass(frozen=True)
class PretrainConfig:
    preset: str | None = "tiny"          # the shape of a fresh model; checked against --init when both are given
    init: str | None = None              # continue from this checkpoint instead of random weights
    data: tuple[str, ...] = ()           # text files (.txt, .jsonl text field, .parquet), repeatable; none: the
                                         # standard library's docstrings
    seq_len: int = 256                   # tokens per packed sequence
    synthetic_fraction: float = SYNTHETIC_FRACTION  # worked problems' share of the text, by characters
    difficulty: int | None = DIFFICULTY  # level 1-5 of the worked problems
    trace_styles: str = DEFAULT_STYLES   # shares of the worked problems' styles: answer, worked, checked (a
                                         # self-check after the steps), corrected (a slip caught and corrected)
    fim_rate: float = FIM_RATE           # share of text documents laid out Prefix-Suffix-Middle (V3 §4.1); 0: none
    val_sequences: int = 16              # held-out sequences for the validation loss
    device: str | None = None            # cpu, cuda or cuda:N; none: cuda when available, else cpu

    def __post_init__(self):
        check_fields(self, {"seq_len": ">= 2", "val_sequences": ">= 1", "synthetic_fraction": "in [0, 1]",
                            "difficulty": "in [1, 5]", "fim_rate": "in [0, 1]"})
        parse_styles(self.trace_styles)


# The default budget: under 10 minutes on 2 CPU cores for the tiny preset (docs/recipe.md, "The budgets")
DEFAULT_TRAIN = TrainConfig(max_steps=420, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=50, save_every=100)


class PretrainBatches:
    """Global batches of `batch_size` packed sequences: input_ids (B, seq_len) and labels shifted by one."""

    def __init__(self, text: Callable[[], Iterator[str]], tokenizer: Tokenizer, config: PretrainConfig,
                 batch_size: int, seed: int):
        self.text, self.tokenizer, self.config, self.batch_size, self.seed = text, tokenizer, config, batch_size, seed
        self.load_state_dict({"epoch": 0, "packer": None})

    def _packer(self, state: dict | None) -> Packer:
        text = fim_documents(split_text(self.text(), "train"), self.config.fim_rate, self.seed * 1000 + self.epoch)
        documents = mix_documents(text, self.seed * 1000 + self.epoch,
                                  self.config.synthetic_fraction, difficulty=self.config.difficulty,
                                  styles=self.config.trace_styles)
        return Packer(documents, self.tokenizer.encode, self.tokenizer.eos_id, self.config.seq_len, state)

    def __iter__(self) -> PretrainBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        rows = []
        fresh = False
        while len(rows) < self.batch_size:
            row = next(self.packer, None)
            if row is not None:
                rows.append(row)
                fresh = False
            elif fresh:
                raise DataError(f"the training text is shorter than one sequence of {self.config.seq_len} tokens")
            else:
                self.epoch += 1
                self.packer, fresh = self._packer(None), True
        x = torch.tensor(rows)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.packer = self._packer(state["packer"])


def validation_loss(model: Transformer, tokens: torch.Tensor) -> dict[str, float]:
    """Main and MTP cross-entropy on held-out sequences (n, seq_len + 1)."""
    tokens = tokens.to(next(model.parameters()).device)
    losses = model.losses(tokens[:, :-1], tokens[:, 1:])
    figures = {"val_loss": round(losses.main.item(), 5)}
    if losses.mtp:
        figures["val_mtp_loss"] = round(sum(l.item() for l in losses.mtp) / len(losses.mtp), 5)
    return figures


def plan(config: PretrainConfig, train_config: TrainConfig, out: Path) -> Plan:
    check_text_files(config.data)
    model = initial_model(config.preset, config.init, train_config.seed, device_of(config.device))
    if config.seq_len > model.config.max_position_embeddings:
        raise ConfigError(f"seq_len {config.seq_len} exceeds the model's max_position_embeddings "
                          f"{model.config.max_position_embeddings}")
    tokenizer = stage_tokenizer(config.init, model.config)
    if config.fim_rate > 0 and any(tokenizer.special_id(t) is None for t in (FIM_BEGIN, FIM_HOLE, FIM_END)):
        raise ConfigError(f"fim_rate {config.fim_rate} needs the FIM tokens, which this checkpoint's tokenizer lacks; "
                          "pass --fim-rate 0")
    text = text_source(config.data)
    val = heldout_sequences(tokenizer, text, config.val_sequences, config.seq_len, config.difficulty,
                            styles=config.trace_styles)
    return Plan(model, tokenizer, PretrainBatches(text, tokenizer, config, train_config.batch_size, train_config.seed),
                lm_loss(train_config.mtp_weight, train_config.balance_weight),
                evaluate=partial(validation_loss, tokens=val) if val is not None else None, prompt=(1, "chat"), report={
        "model": f"{config.preset or config.init}, {sum(p.numel() for p in model.parameters()):,} parameters",
        "data": ", ".join(config.data) or "standard-library docstrings",
        "synthetic share": f"{config.synthetic_fraction:.0%} of the text, by characters "
                           f"(difficulty {config.difficulty}), trace styles {config.trace_styles}",
        "fill-in-middle": f"{config.fim_rate:.0%} of the text documents, Prefix-Suffix-Middle",
        "batch": f"{train_config.batch_size} x {config.seq_len} tokens",
    })


PRETRAIN = Stage("pretrain", "Pretraining", PretrainConfig, plan)


def pretrain(config: PretrainConfig, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Pretrain into `out` (see the module docstring); with `resume`, continue the run in `out` with its settings."""
    return run_stage(PRETRAIN, config, train_config, out, resume)
