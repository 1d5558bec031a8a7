"""The R1 recipe as typed data: each stage is its name, the stage it starts from, its config (whose type says what
the stage does) and its training budget. `recipe(size)` gives the stages of `nanoseek run`; how each budget was
chosen, with the runs that measured it, is in docs/recipe.md.

    pretrain ──> r1-zero        GRPO straight from the base (§2.2), a branch kept for comparison
        └──────> sft            cold start on worked reasoning traces (§2.3.1)
                 └─> grpo       reasoning RL, with the language-consistency reward (§2.3.2)
                     └─> rejection-sft   rejection sampling from grpo, then SFT on what was kept (§2.3.3)
                         └─> grpo-final  a last RL stage (§2.3.4)
                             ├─> distill         pretrain-student fine-tuned on its verified answers (§2.4)
                             └─> quantize-int8, quantize-int4   its weights, int8 and int4 (`nanoseek quantize`)
    pretrain-student    the dense student's base, pretrained like the teacher on the same mix

Departures from the paper: R1 §2.3.3 fine-tunes the base model again on the rejection-sampled data; at this scale
we continue from the RL checkpoint (rejection-sampling fine-tuning), which the final RL stage then refines. The
reasoning RL stages drop GRPO's KL term, std scaling and length normalisation (Dr. GRPO, arXiv 2503.20783); R1-Zero
adds DAPO's clip-higher, dynamic sampling and overlong filtering and a curriculum over the tasks' levels. Rejection
sampling keeps the questions at the edge of the policy's competence (greedy answer wrong, a sample right) and
replays cold-start data beside them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nanoseek.data.sources import DIFFICULTY
from nanoseek.errors import ConfigError
from nanoseek.train.config import TrainConfig
from nanoseek.train.distill import DEFAULT_TRAIN as DISTILL_TRAIN, DistillConfig
from nanoseek.train.grpo import DEFAULT_TRAIN as GRPO_TRAIN, GRPOConfig
from nanoseek.train.pretrain import DEFAULT_TRAIN as PRETRAIN_TRAIN, PretrainConfig
from nanoseek.train.rejection import RejectionConfig
from nanoseek.train.sft import DEFAULT_TRAIN as SFT_TRAIN, SFTConfig

SIZES = ("default", "quick", "smoke")
REJECTION_SEED = 31337    # rejection sampling's questions: train-split problems none of the other stages drew


@dataclass(frozen=True)
class RejectionSFT:
    """Rejection sampling then SFT: how many train-split questions to sample, at which levels (in turn), how
    (sampling.edge: only questions at the edge of competence), the replay of cold-start data (worked problems at the
    recipe's level, `replay` rows per kept row, shuffled in) and the SFT after."""
    questions: int
    sampling: RejectionConfig
    sft: SFTConfig
    levels: tuple[int, ...] = (DIFFICULTY,)
    replay: float = 0.0


@dataclass(frozen=True)
class Quantize:
    """The init checkpoint's weights in `format` (`nanoseek quantize`), rounded by GPTQ."""
    format: str


StageConfig = PretrainConfig | SFTConfig | GRPOConfig | RejectionSFT | DistillConfig | Quantize


@dataclass(frozen=True)
class Stage:
    name: str
    init: str | None                # the stage whose checkpoint this one starts from
    config: StageConfig             # what the stage does, by its type
    train: TrainConfig | None       # None: a stage that does not train (quantize)
    few_shot: int = 0               # the evaluation prompt, the one the stage was trained with: worked examples,
    template: str = "chat"          # or without them "chat" or "r1-zero"
    about: str = ""


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    eval_problems: int = 200        # held-out problems, the same for every stage
    eval_max_new_tokens: int = 192  # the worked traces take up to ~120 tokens


def recipe(size: str = "default") -> Recipe:
    """The stages and budgets of `nanoseek run` ("default", "quick" or the CI's "smoke")."""
    if size not in SIZES:
        raise ConfigError(f"recipe {size!r}: expected one of {SIZES}")
    # The base pretrains longer than `nanoseek pretrain`'s default, on twice its share of worked problems: R1-Zero
    # amplifies only what the base can already do.
    steps = {"default": dict(pretrain=1000, sft=SFT_TRAIN.max_steps, zero=100, grpo=234, rft=40,
                             final=30, questions=384, evals=200),
             "quick": dict(pretrain=90, sft=60, zero=8, grpo=16, rft=12, final=8, questions=96, evals=100),
             "smoke": dict(pretrain=2, sft=2, zero=2, grpo=2, rft=2, final=2, questions=4, evals=4)}[size]
    smoke = size == "smoke"
    seq_len, long_len, new_tokens = (64, 64, 16) if smoke else (256, 512, 192)
    worked = 0.6  # worked problems' share of the pretraining text (data/mix.py's default: 0.3)
    grpo_base = GRPOConfig(prompts_per_step=2, group_size=4, max_new_tokens=16) if smoke else GRPOConfig()
    short = dict(batch_size=4, save_every=1) if smoke else {}

    def budget(base: TrainConfig, steps: int, **changes) -> TrainConfig:
        changes = {"max_steps": steps, "warmup_steps": min(base.warmup_steps, steps // 5),
                   "save_every": max(1, steps // 2), **changes, **short}
        return dataclasses.replace(base, **changes)

    def rl_budget(steps: int, **changes) -> TrainConfig:
        return budget(GRPO_TRAIN, steps, eval_every=max(1, steps // 10), **changes)

    # every RL stage measures itself on the held-out problems: greedily every tenth of its steps, pass@k at its ends
    heldout = {"default": dict(heldout=100, pass_k=8), "quick": dict(heldout=40, pass_k=4),
               "smoke": dict(heldout=4, pass_k=2)}[size]
    grpo_base = dataclasses.replace(grpo_base, **heldout)
    # Reasoning RL: 16 questions per step, the routing bias left where SFT put it (γ = 0, so expert selection moves
    # only by the reward's gradient), and GRPO without its two biases (Dr. GRPO): advantages r - mean without the
    # std, the loss averaged over all the batch's tokens (as DAPO), no KL term (β = 0, as both).
    reasoning_rl = dataclasses.replace(grpo_base, rewards="accuracy=1,format=0.5,language=0.1",
                                       prompts_per_step=2 if smoke else 16, beta=0.0, loss_agg="token",
                                       adv_scale="none")
    # R1-Zero (R1 §2.2): from the base, R1's plain-text template, accuracy and format rewards only, with Dr. GRPO's
    # objective, no KL, DAPO's clip-higher (ε 0.2 / 0.28, §3.1), dynamic sampling (§3.2) and overlong filtering
    # (§3.4), and questions at the edge of competence (each task's level kept at a pass rate of 10-90%).
    zero_rl = dataclasses.replace(grpo_base, template="r1-zero", beta=0.0, loss_agg="token", adv_scale="none",
                                  clip_eps_high=0.28, dynamic_sampling=4, mask_truncated=True, curriculum=(0.1, 0.9))
    # the final RL stage trains where the policy's competence now ends: the same curriculum, from level 1
    final_rl = dataclasses.replace(reasoning_rl, curriculum=(0.1, 0.9))
    # R1 §2.4 distils into pretrained bases (Qwen2.5, Llama 3): the student is first pretrained like the teacher
    student = {"default": dict(questions=4096, steps=DISTILL_TRAIN.max_steps), "quick": dict(questions=256, steps=60),
               "smoke": dict(questions=4, steps=2)}[size]
    base = PretrainConfig(seq_len=seq_len, synthetic_fraction=worked)
    stages = (
        Stage("pretrain", None, base, budget(PRETRAIN_TRAIN, steps["pretrain"]), few_shot=1,
              about="next-token + MTP pretraining on text and worked problems"),
        Stage("r1-zero", "pretrain", zero_rl, rl_budget(steps["zero"]), template="r1-zero",
              about="GRPO from the base, R1's plain-text template; accuracy + format rewards"),
        Stage("sft", "pretrain", SFTConfig(seq_len=seq_len), budget(SFT_TRAIN, steps["sft"]),
              about="cold start on worked reasoning traces"),
        Stage("grpo", "sft", reasoning_rl, rl_budget(steps["grpo"], bias_update_speed=0.0),
              about="reasoning RL; accuracy + format + language-consistency rewards"),
        # expert iteration at the edge of competence (STaR, ReST): questions of levels 1-5 whose greedy answer is
        # wrong but some of 4 samples right, the verified samples kept, replayed with as much cold-start data, at a
        # low learning rate, as few samples are kept
        Stage("rejection-sft", "grpo",
              RejectionSFT(steps["questions"], RejectionConfig(checkpoint="", prompts="", k=4, seed=REJECTION_SEED,
                                                               max_new_tokens=new_tokens, edge=True),
                           SFTConfig(seq_len=long_len), levels=(1, 2, 3, 4, 5), replay=1.0),
              budget(SFT_TRAIN, steps["rft"], lr=1e-4),
              about=f"rejection sampling of {steps['questions']} questions x 4 at levels 1-5, the edge of "
                    f"competence kept, then SFT on it with a replay of cold-start data"),
        Stage("grpo-final", "rejection-sft", final_rl, rl_budget(steps["final"], bias_update_speed=0.0),
              about="the last RL stage, its levels moved by the curriculum"),
        Stage("pretrain-student", None, dataclasses.replace(base, preset="tiny-student"),
              budget(PRETRAIN_TRAIN, steps["pretrain"]), few_shot=1,
              about="the dense student's own base: next-token pretraining on the same text and worked problems"),
        Stage("distill", "grpo-final",
              DistillConfig(student="pretrain-student", questions=student["questions"], max_new_tokens=new_tokens,
                            seq_len=long_len),
              budget(DISTILL_TRAIN, student["steps"]),
              about=f"pretrain-student fine-tuned on grpo-final's verified answers to {student['questions']} "
                    f"questions x 4"),
        Stage("quantize-int8", "grpo-final", Quantize("int8"), None, about="grpo-final's weights in int8"),
        Stage("quantize-int4", "grpo-final", Quantize("int4"), None, about="grpo-final's weights in int4"),
    )
    return Recipe(stages, eval_problems=steps["evals"], eval_max_new_tokens=new_tokens)
