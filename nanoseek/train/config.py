"""TrainConfig: the optimizer, schedule and bookkeeping settings of the one training loop (loop.py), with DeepSeek-V3's
values where the report gives them (V3 §4.2)."""
from __future__ import annotations

from dataclasses import dataclass

from nanoseek.checks import check_fields
from nanoseek.errors import ConfigError
from nanoseek.train.schedule import warmup_cosine, warmup_stable_decay

SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 300               # optimizer steps
    batch_size: int = 16               # sequences per optimizer step (the global batch)
    micro_batch_size: int = 0          # sequences per forward pass; 0: the whole batch at once
    lr: float = 3e-3                   # peak learning rate
    schedule: str = "cosine"           # "cosine" or "wsd" (warmup-stable-decay, V3 §4.2)
    warmup_steps: int = 20             # linear warmup from 0 to lr
    decay_fraction: float = 0.2        # wsd: the share of steps in the final decay
    min_lr_ratio: float = 0.1          # the schedule ends at lr * min_lr_ratio (V3 §4.2: a tenth)
    weight_decay: float = 0.1          # AdamW's weight decay on matrices (V3 §4.2)
    beta1: float = 0.9                 # AdamW's β1 (V3 §4.2: β = (0.9, 0.95))
    beta2: float = 0.95                # AdamW's β2
    grad_clip: float = 1.0             # gradient-clipping norm (V3 §4.2: 1.0); 0: none
    mtp_weight: float = 0.3            # λ, the MTP loss weight (V3 §4.2: 0.3, later 0.1); 0 skips the MTP module
    bias_update_speed: float = 0.001   # γ, the routing-bias update speed of aux-loss-free balancing (V3 §4.2)
    balance_weight: float = 1e-4       # α of the sequence-wise balance loss, V3 §4.2
    bf16: bool = False                 # bf16 autocast (fast on GPUs and AMX CPUs); weights, optimizer and
                                       # routing bias stay float32
    compile: bool = True               # torch.compile each block, forward and backward (`compile_blocks`), unless
                                       # the process runs eagerly (--no-compile)
    expert_parallel: bool = False      # with --nproc: routed experts split across processes (all-to-all)
    eval_every: int = 0                # evaluation interval in steps; 0: at the end only
    save_every: int = 100              # checkpoint interval in steps
    keep_last: int = 2                 # training checkpoints kept
    max_bad_steps: int = 5             # consecutive non-finite losses before the run aborts
    seed: int = 0                      # of the initial weights, the data and the sampling

    def __post_init__(self):
        check_fields(self, {**dict.fromkeys(("max_steps", "batch_size", "save_every", "keep_last", "max_bad_steps"),
                                            ">= 1"), "lr": "> 0", "schedule": SCHEDULES}, default=">= 0")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                              f"{self.micro_batch_size}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        if self.schedule == "wsd":
            return warmup_stable_decay(step, self.max_steps, self.lr, self.warmup_steps,
                                       round(self.decay_fraction * self.max_steps), self.min_lr_ratio)
        return warmup_cosine(step, self.max_steps, self.lr, self.warmup_steps, self.min_lr_ratio)
