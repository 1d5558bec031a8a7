"""Distillation into a small dense student (DeepSeek-R1, arXiv 2501.12948, §2.4).

The teacher (the final R1 checkpoint) answers `questions` train-split questions k times each with the inference
engine; rejection sampling (rejection.py, R1 §2.3.3) keeps the verified-correct, well-formed completions, each
distinct one once. The student, a checkpoint or fresh from a preset (with the teacher's vocabulary, since it reads
the teacher's tokenizer), is fine-tuned on them with SFT's batching and loss mask (sft.py) through the one training
loop. R1 distils by SFT alone into pretrained bases (Qwen2.5, Llama 3), and finds it beats RL on the small model
itself (§4.1); `nanoseek run` pretrains its student before distilling into it.

Optional logit distillation (Hinton, Vinyals & Dean 2015): on the assistant tokens the student also matches the
teacher's next-token distribution softened by a temperature T, through the forward KL,

    L = (1 - α) L_SFT + α T² KL(softmax(z_teacher / T) || softmax(z_student / T)),

where T² keeps the soft term's gradients on the scale of the hard one's whatever T is. The teacher only runs
forward. The student's own main head is trained on this loss (no MTP or balance term: students are dense).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from nanoseek.checkpoint import load_checkpoint
from nanoseek.checks import check_fields
from nanoseek.config import PRESETS, ModelConfig
from nanoseek.data.sources import DIFFICULTY
from nanoseek.data.tasks import generate_mix
from nanoseek.errors import CheckpointError, ConfigError, DataError
from nanoseek.model import Transformer
from nanoseek.train.config import TrainConfig
from nanoseek.train.loop import LossFn, StepLoss, TrainResult, lm_loss
from nanoseek.train.rejection import RejectionConfig, rejected, sample_into
from nanoseek.train.run_folder import TRACES
from nanoseek.train.sft import SFTBatches, SFTConfig, check_sft_files, heldout_loss
from nanoseek.train.stage import Plan, Stage, device_of, run_stage, stage_tokenizer

PROMPT_SEED = 4242         # the teacher's questions: train-split problems from a stream no other stage draws


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = "runs/r1/grpo-final"  # the R1 checkpoint (`nanoseek run` writes it there)
    student: str = "tiny-student"        # a preset (fresh weights) or a checkpoint directory
    traces: str | None = None            # JSONL of verified teacher completions already sampled; None: sample here
    k: int = 4                           # completions the teacher samples per question
    questions: int = 4096                # train-split questions the teacher answers
    temperature: float = 0.6             # the teacher's sampling temperature (what R1 is evaluated at)
    max_new_tokens: int = 192            # longest teacher completion (the worked traces take up to ~120 tokens)
    logit_kd: bool = False               # add the KL to the teacher's distribution
    kd_temperature: float = 2.0          # T
    kd_alpha: float = 0.5                # α, the weight of the KL term
    seq_len: int = 512                   # longest conversation, in tokens
    difficulty: int | None = DIFFICULTY  # of the questions
    val_conversations: int = 32          # held-out problems for the validation loss
    device: str | None = None            # cpu, cuda or cuda:N; none: cuda when available, else cpu
    OLD_NAMES: ClassVar[dict[str, str]] = {"prompts": "questions"}  # fields renamed since, in older run.json files

    def __post_init__(self):
        check_fields(self, {"kd_alpha": "in [0, 1]", "difficulty": "in [1, 5]", "seq_len": ">= 2",
                            "val_conversations": ">= 1"}, default="> 0")


# Several epochs over about two thousand traces (docs/recipe.md, "The budgets")
DEFAULT_TRAIN = TrainConfig(max_steps=800, batch_size=16, lr=6e-3, warmup_steps=20, eval_every=100, save_every=100)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Mean over the positions where `mask` is true of KL(p_teacher || p_student), both distributions softmax of
    the logits / temperature. Logits (batch, seq, vocab); mask (batch, seq) bool."""
    log_p = (teacher_logits.float() / temperature).log_softmax(-1)
    log_q = (student_logits.float() / temperature).log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)                    # (batch, seq)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def distill_loss(teacher: Transformer, temperature: float, alpha: float) -> LossFn:
    """(1 - α) cross-entropy on the labels + α T² KL to the teacher on the same (assistant) tokens."""

    def loss_fn(model: Transformer, batch: dict[str, torch.Tensor]) -> StepLoss:
        input_ids, labels = batch["input_ids"], batch["labels"]
        mask = labels != -100
        logits = model(input_ids)
        with torch.no_grad():
            teacher_logits = teacher(input_ids)
        sft = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        kd = kd_loss(logits, teacher_logits, mask, temperature)
        loss = (1 - alpha) * sft + alpha * temperature ** 2 * kd
        return StepLoss(loss, int(mask.sum()), {"sft_loss": sft.item(), "kd_loss": kd.item()})

    return loss_fn


def teacher_traces(config: DistillConfig, folder: str | Path, seed: int) -> dict:
    """The teacher's verified answers to config.questions train-split questions, sampled into `folder` once
    (`rejection.sample_into`); returns rejection sampling's counts."""
    questions = generate_mix(config.questions, PROMPT_SEED + seed, "train", config.difficulty)
    return sample_into(Path(folder), questions, RejectionConfig(
        checkpoint=config.teacher, prompts="", k=config.k, temperature=config.temperature,
        max_new_tokens=config.max_new_tokens, seed=seed, device=config.device), kept=TRACES)


def student_model(spec: str, teacher: ModelConfig, seed: int, device: torch.device) -> Transformer:
    """A fresh student of preset `spec` with the teacher's vocabulary and special ids, or checkpoint `spec`, which
    must have the teacher's vocabulary size."""
    if spec in PRESETS:
        torch.manual_seed(seed)
        config = ModelConfig.from_preset(spec).replace(vocab_size=teacher.vocab_size, bos_token_id=teacher.bos_token_id,
                                                       eos_token_id=teacher.eos_token_id)
        return Transformer(config).to(device)
    if not Path(spec).is_dir():
        raise ConfigError(f"student {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    model = load_checkpoint(spec, device=device)
    if model.config.vocab_size != teacher.vocab_size:
        raise CheckpointError(f"student {spec} has vocab_size {model.config.vocab_size} but the teacher has "
                              f"{teacher.vocab_size}: the student reads the teacher's tokenizer")
    return model.train()


def plan(config: DistillConfig, train_config: TrainConfig, out: Path) -> Plan:
    """Check the inputs, build the student, and sample the teacher's traces into `out` first (unless config.traces
    names them; a resumed run reads them back)."""
    if config.traces:
        check_sft_files([config.traces])
    device = device_of(config.device)
    if not Path(config.teacher).is_dir():
        raise CheckpointError(f"teacher checkpoint {config.teacher} does not exist")
    teacher_config = ModelConfig.load(config.teacher)
    tokenizer = stage_tokenizer(config.teacher, teacher_config)
    student = student_model(config.student, teacher_config, train_config.seed, device)
    if config.seq_len + 1 > student.config.max_position_embeddings:
        raise ConfigError(f"seq_len {config.seq_len} exceeds the student's max_position_embeddings "
                          f"{student.config.max_position_embeddings}")
    counts = None if config.traces else teacher_traces(config, out, train_config.seed)
    if counts is not None and counts["kept"] == 0:
        shutil.rmtree(out)  # check_out found it empty or absent: all of it is this run's
        raise DataError(f"teacher {config.teacher} kept none of its {counts['samples']} completions "
                        f"({rejected(counts)}): nothing to distil; give a trained "
                        f"teacher, more prompts or samples, or a lower temperature")
    traces = config.traces or str(out / TRACES)
    batches = SFTBatches((traces,), tokenizer, SFTConfig(seq_len=config.seq_len, difficulty=config.difficulty),
                         train_config.batch_size, train_config.seed)
    if config.logit_kd:
        teacher = load_checkpoint(config.teacher, device=device).requires_grad_(False)
        loss_fn = distill_loss(teacher, config.kd_temperature, config.kd_alpha)
    else:
        loss_fn = lm_loss(train_config.mtp_weight, train_config.balance_weight)
    return Plan(student, tokenizer, batches, loss_fn,
                evaluate=heldout_loss(tokenizer, config.val_conversations, config.seq_len, config.difficulty), report={
        "teacher": config.teacher,
        "student": f"{config.student} ({student.config.param_counts()['total']:,} parameters)",
        "traces": (traces if counts is None else
                   f"{counts['kept']} kept of {counts['samples']} teacher completions ({config.k} per question, "
                   f"temperature {config.temperature:g}; {counts['questions_solved']} of {counts['questions']} "
                   f"questions have one)"),
        "loss": (f"(1 - {config.kd_alpha:g}) SFT + {config.kd_alpha:g} T² KL(teacher || student), "
                 f"T = {config.kd_temperature:g}" if config.logit_kd else "SFT on the assistant tokens"),
    })


DISTILL = Stage("distill", "Distillation", DistillConfig, plan)


def distill(config: DistillConfig, train_config: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    """Distil config.teacher into a student in `out`; with `resume`, continue the run in `out` with its settings."""
    return run_stage(DISTILL, config, train_config, out, resume)
