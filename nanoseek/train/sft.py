"""Supervised fine-tuning on conversations in the R1 chat template, the loss on assistant tokens only.

R1 (arXiv 2501.12948) §2.3.1 "cold start": a small set of long reasoning traces, each answer written as
`<think>reasoning</think>` then the summary, fine-tunes the base model before RL. A problem row
{"prompt", "reasoning", "answer"} becomes the conversation user: prompt / assistant: answer with the reasoning as
`reasoning_content` (rendered inside the think tags); a row {"messages": [...]} is used as it is. The default data is
an endless stream of generated train-split problems with their worked traces.

Conversations are packed whole into rows of at most seq_len + 1 tokens (a conversation that does not fit starts the
next row; one longer than a row is cut), and a batch's rows are padded to the longest with end-of-sequence tokens
that carry no loss. Packing wastes little compute on padding: the problems differ in length by 3x, and padding each
to the longest in its batch left about half of every batch empty. Labels are -100 except where the next token is
the assistant's (`tokenizer.chat_ids` marks reasoning, think tags, answer and the closing eos), so a packed row trains
each conversation's answer and never the start of the next conversation.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

import torch

from nanoseek.checks import check_fields
from nanoseek.data.conversations import check_sft_files, encode, pad_batch, read_rows
from nanoseek.data.problem import Problem
from nanoseek.data.sources import DIFFICULTY, eval_problems
from nanoseek.data.tasks import stream_mix
from nanoseek.errors import ConfigError
from nanoseek.model import Transformer
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import TrainResult, lm_loss
from nanoseek.train.stage import Plan, Stage, device_of, initial_model, run_stage, stage_tokenizer


@dataclass(frozen=True)
class SFTConfig:
    init: str = "runs/pretrain"          # the base model
    preset: str | None = None            # when given, --init must have this shape
    data: tuple[str, ...] = ()           # JSONL of problems {prompt, reasoning, answer} or conversations
                                         # {messages}, repeatable; none: generated problems with worked traces
    seq_len: int = 256                   # tokens per packed row, the longest conversation (longer ones are cut)
    difficulty: int | None = DIFFICULTY  # level 1-5 of the generated problems
    val_conversations: int = 32          # held-out problems for the validation loss
    device: str | None = None            # cpu, cuda or cuda:N; none: cuda when available, else cpu

    def __post_init__(self):
        check_fields(self, {"seq_len": ">= 2", "difficulty": "in [1, 5]", "val_conversations": ">= 1"})


# The default budget: about 5 minutes on 2 CPU cores for the tiny preset; λ = 0: MTP is a pre-training objective
# (V3 §2.2), and skipping its module buys steps (docs/recipe.md, "The budgets")
DEFAULT_TRAIN = TrainConfig(max_steps=500, batch_size=8, lr=3e-3, warmup_steps=10, eval_every=50, save_every=100,
                            mtp_weight=0.0)


class SFTBatches:
    """Global batches of `batch_size` packed rows; position = (epoch over the files, conversations packed in it).
    The conversation that did not fit into the last row is read again on resume, so the position stays exact."""

    def __init__(self, data: Sequence[str], tokenizer: Tokenizer, config: SFTConfig, batch_size: int, seed: int):
        self.data, self.tokenizer, self.config, self.batch_size, self.seed = data, tokenizer, config, batch_size, seed
        self.load_state_dict({"epoch": 0, "index": 0})

    def _rows(self) -> Iterator[Problem | dict]:
        if not self.data:
            return stream_mix(self.seed * 1000 + self.epoch, "train", self.config.difficulty)
        return (row for path in self.data for row in read_rows(path))

    def __iter__(self) -> SFTBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return pad_batch([self._packed_row() for _ in range(self.batch_size)], self.tokenizer.eos_id)

    def _packed_row(self) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []
        while True:
            if self.pending is None:
                row = next(self.rows, None)
                if row is None:
                    self.epoch, self.index, self.rows = self.epoch + 1, 0, self._rows()
                    continue
                self.pending = encode(self.tokenizer, row, self.config.seq_len)
            if ids and len(ids) + len(self.pending[0]) > self.config.seq_len + 1:
                return ids, mask
            ids += self.pending[0]
            mask += self.pending[1]
            self.pending, self.index = None, self.index + 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.pending = state["epoch"], state["index"], None
        self.rows = self._rows()
        for _ in islice(self.rows, self.index):
            pass


def heldout_loss(tokenizer: Tokenizer, n: int, seq_len: int, difficulty: int | None):
    """The evaluation of SFT and distillation: cross-entropy on the assistant tokens of n held-out problems."""
    batch = pad_batch([encode(tokenizer, p, seq_len) for p in eval_problems(n, difficulty)], tokenizer.eos_id)

    def validation_loss(model: Transformer) -> dict[str, float]:
        device = next(model.parameters()).device
        losses = model.losses(batch["input_ids"].to(device), batch["labels"].to(device))
        return {"val_loss": round(losses.main.item(), 5)}

    return validation_loss


def plan(config: SFTConfig, train_config: TrainConfig, out: Path) -> Plan:
    check_sft_files(config.data)
    model = initial_model(config.preset, config.init, train_config.seed, device_of(config.device))
    if config.seq_len + 1 > model.config.max_position_embeddings:
        raise ConfigError(f"seq_len {config.seq_len} exceeds the model's max_position_embeddings "
                          f"{model.config.max_position_embeddings}")
    tokenizer = stage_tokenizer(config.init, model.config)
    return Plan(model, tokenizer, SFTBatches(config.data, tokenizer, config, train_config.batch_size, train_config.seed),
                lm_loss(train_config.mtp_weight, train_config.balance_weight),
                evaluate=heldout_loss(tokenizer, config.val_conversations, config.seq_len, config.difficulty), report={
        "base model": config.init,
        "data": ", ".join(config.data) or f"generated train-split problems (difficulty {config.difficulty})",
        "batch": f"{train_config.batch_size} conversations of up to {config.seq_len} tokens",
    })


SFT = Stage("sft", "Supervised fine-tuning", SFTConfig, plan)


def sft(config: SFTConfig, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Fine-tune config.init into `out`; with `resume`, continue the run in `out` with the settings saved there."""
    return run_stage(SFT, config, train_config, out, resume)
