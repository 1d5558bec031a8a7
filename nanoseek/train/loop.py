"""The one training loop. Every stage (pretraining, SFT, GRPO, distillation) supplies a batch source and a loss
function and calls `train`; the loop owns everything else:

- AdamW with linear warmup then cosine or warmup-stable-decay (`schedule`), gradient clipping, gradient
  accumulation over micro-batches, optional bf16 autocast (CPU or CUDA);
- DeepSeekMoE's auxiliary-loss-free balancing (V3 §2.1.2): after every optimizer step each routing bias moves by
  γ towards balance, `model.update_routing_bias(γ)`; the sequence-wise balance loss α (V3 §2.3, Eq. 17) and the MTP
  weight λ (V3 §2.2, Eq. 25) enter through `lm_loss`, the loss of every stage that trains on next tokens;
- a progress bar (loss, tokens/s, ETA) and `metrics.jsonl`, one line per step: step, loss, mtp_loss, lr, grad_norm,
  tokens_per_s, mfu (against this machine's measured matmul peak), per-layer expert load max/mean;
- periodic evaluation, atomic checkpoints every `save_every` steps (the last `keep_last` kept), exact resume,
  Ctrl-C (save, then stop), and skipping a step whose loss is not finite (abort after `max_bad_steps` in a row).

Exact resume: the model, optimizer moments, step (hence the schedule), the batch source's position and the RNG
states are all restored, and no step depends on anything else, so a resumed float32 CPU run ends with the same
weights, bit for bit, as one that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from tqdm import tqdm

from nanoseek import distributed
from nanoseek.compiling import compile_enabled
from nanoseek.cost import flops_per_token, measure_matmul_peak
from nanoseek.errors import NanoseekError
from nanoseek.model import Transformer
from nanoseek.train.config import TrainConfig
from nanoseek.train.dist_checkpoint import load_distributed_state, save_distributed_state
from nanoseek.train.metrics import MetricsLog, expert_load, truncate_metrics
from nanoseek.train.run_folder import METRICS, is_distributed_checkpoint, latest_checkpoint
from nanoseek.train.state import load_training_state, save_training_state

@dataclass
class StepLoss:
    """What a loss function returns for one micro-batch."""
    loss: torch.Tensor           # the mean over this micro-batch's `count` units (target tokens, sequences)
    count: int                   # micro-batches are weighted by it, so accumulation equals one big batch
    logs: dict[str, float]       # extra figures for metrics.jsonl (e.g. mtp_loss), averaged with the same weights


LossFn = Callable[[Transformer, dict[str, torch.Tensor]], StepLoss]


class BatchSource(Protocol):
    """An endless iterator of global batches (dicts of tensors, batch first) that can report and restore its
    position: `state_dict()` must be JSON-serialisable. A batch with no rows is a step without an update (GRPO:
    every group's rewards were equal). A source that does real work per batch (GRPO's rollouts) may also define
    `logs() -> dict`: figures about the batch it just gave, written into that step's metrics line, which then also
    gets `update_tokens_per_s`, the speed of the step less the time spent in the source; its `generation_flops` and
    `gen_tokens` count into the run's FLOPs and generated tokens."""

    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    step: int                    # optimizer steps done
    loss: float                  # the last step's loss
    tokens: int                  # input tokens processed, over all sessions of the run
    generated_tokens: int        # tokens the batch source generated (GRPO's rollouts), over all sessions
    elapsed_s: float             # training time over all sessions (evaluation included)
    tokens_per_s: float
    flops: float                 # model FLOPs of the training steps and of the batch source's generation
                                 # (nanoseek.cost), over all sessions
    mfu: float | None            # model FLOPs utilisation against peak_flops
    peak_flops: float | None     # the measured matmul FLOP/s of the device (all ranks' under torchrun)
    interrupted: bool            # stopped by Ctrl-C; the last checkpoint holds the state
    checkpoint: Path | None      # the newest training checkpoint


def lm_loss(mtp_weight: float, balance_weight: float) -> LossFn:
    """Next-token loss with MTP and the sequence-wise balance term, L = L_main + λ/D Σ_k L_MTP^k + α L_bal
    (V3 Eq. 25 and 17), for batches of `input_ids` and `labels` (-100 where no loss is taken). With λ = 0 the
    MTP modules do not run: they cost a third of a tiny model's step."""

    def loss_fn(model: Transformer, batch: dict[str, torch.Tensor]) -> StepLoss:
        losses = model.losses(batch["input_ids"], batch["labels"], mtp=mtp_weight > 0)
        logs = {"main_loss": losses.main.item(), "balance_loss": losses.balance.item()}
        if losses.mtp:
            logs["mtp_loss"] = sum(l.item() for l in losses.mtp) / len(losses.mtp)
        return StepLoss(losses.total(mtp_weight, balance_weight), int((batch["labels"] != -100).sum()), logs)

    return loss_fn


def accumulate_gradients(model: Transformer, micro_batches: list[dict[str, torch.Tensor]], loss_fn: LossFn,
                         bf16: bool = False) -> StepLoss | None:
    """Forward and backward every micro-batch, leaving in .grad the gradient of the count-weighted mean loss over
    all of them (what one forward over the whole batch would give); under torchrun, over every rank's micro-batches
    (the gradients are summed across ranks, the counts too). None when a loss is not finite or no micro-batch
    has a unit to learn from; the caller then skips the step."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    passes = len(micro_batches)
    if distributed.active():  # FSDP's collectives pair up only if every rank runs as many passes
        passes = int(distributed.all_reduce(torch.tensor(passes), "max"))
    count, loss_sum, logs, finite = 0, 0.0, {}, True
    for i in range(passes):
        micro = micro_batches[min(i, len(micro_batches) - 1)]
        with autocast:
            out = loss_fn(model, micro)
        ghost = i >= len(micro_batches) or "ghost" in micro  # a pass only to take part in the collectives
        bad = not ghost and out.count > 0 and not torch.isfinite(out.loss.detach())
        if ghost or bad or out.count == 0:
            finite = finite and not bad
            if not distributed.active():
                if bad:
                    return None
                continue
            (out.loss.nan_to_num(0.0, 0.0, 0.0) * 0).backward()  # FSDP's gradient collectives need every rank
            continue
        (out.loss * out.count).backward()
        count += out.count
        loss_sum += out.loss.item() * out.count
        for k, v in out.logs.items():
            logs[k] = logs.get(k, 0.0) + v * out.count
    if distributed.active():
        totals = distributed.all_reduce(torch.tensor([count, loss_sum, float(not finite)], dtype=torch.float64))
        count, loss_sum, finite = int(totals[0]), float(totals[1]), not totals[2]
        logs = distributed.sum_dicts(logs)
    if not finite or count == 0:
        return None
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(count)
    return StepLoss(torch.tensor(loss_sum / count), count, {k: v / count for k, v in logs.items()})


def compile_blocks(model: Transformer) -> None:
    """torch.compile each block in place, as torchtitan does: blocks of one kind (dense, MoE, MTP) share their
    compiled forward and backward, so a few graphs serve the whole model, and the loss, the optimizer and the
    bookkeeping around them stay eager. Under torchrun (FSDP2) the blocks stay eager."""
    if distributed.active():
        return
    for block in (*model.layers, *model.mtp):
        block.compile()


def make_optimizer(model: Transformer, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (projections, experts, embeddings), none on norms. The fused kernel
    updates all tensors in one call (5 ms a step for the tiny preset on 2 CPU cores, against 33 ms for the
    per-tensor loop); sharded (FSDP2) parameters take the default implementation."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=None if distributed.active() else True)


def train(model: Transformer, batches: BatchSource, loss_fn: LossFn, config: TrainConfig, out: str | Path,
          evaluate: Callable[[Transformer], dict[str, float]] | None = None, resume: bool = False,
          desc: str = "train", postfix: Callable[[dict], dict[str, str]] | None = None,
          evaluate_ends: Callable[[Transformer], dict[str, float]] | None = None) -> TrainResult:
    """Train `model` in place for config.max_steps optimizer steps on `batches` (global batches of
    config.batch_size sequences), writing metrics.jsonl and checkpoints/ into `out`. With `resume`, continue from
    the newest checkpoint in `out`. `evaluate(model)` (in eval mode, under no_grad) returns figures merged into the
    metrics line of every config.eval_every-th step and of the last step; `evaluate_ends(model)` figures taken at the
    two ends only: from the starting model (with evaluate's, as a line of step 0, in a run that is not resumed) and
    in the last step's line. `postfix(record)` gives the progress bar's figures from a step's metrics line (default:
    loss, MTP loss, tokens/s, learning rate)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    if config.mtp_weight == 0:  # no MTP loss: freeze the modules, so that neither weight decay nor FSDP's zero
        model.mtp.requires_grad_(False)  # gradients move them (one process never gives them gradients)
    optimizer = make_optimizer(model, config)
    step, tokens, generated, flops, elapsed, bad, checkpoint = 0, 0, 0, 0.0, 0.0, 0, None
    if resume:
        checkpoint = latest_checkpoint(out)
        trainer = (load_distributed_state if distributed.active() or is_distributed_checkpoint(checkpoint)
                   else load_training_state)(checkpoint, model, optimizer)
        batches.load_state_dict(trainer["data"])
        step, tokens, flops = trainer["step"], trainer["tokens"], trainer["flops"]
        generated = trainer.get("generated_tokens", 0)  # a checkpoint written before it was counted: 0
        elapsed, bad = trainer["elapsed_s"], trainer["bad_steps"]
        if distributed.is_main():
            truncate_metrics(out / METRICS, step)
    elif (out / METRICS).exists() and distributed.is_main():
        (out / METRICS).unlink()
    peak = matmul_peak(device, config.bf16)
    if peak is not None:  # under torchrun the FLOPs are every rank's: so is the peak
        peak *= distributed.world()
    has_mtp = len(model.mtp) > 0 and config.mtp_weight > 0  # FLOPs of the MTP module when the loss trains it
    last_loss = float("nan")
    model.train()
    if config.compile and compile_enabled():
        compile_blocks(model)

    def save(at: int) -> Path:
        state = {"data": batches.state_dict(), "tokens": tokens, "generated_tokens": generated, "flops": flops,
                 "elapsed_s": elapsed,
                 "bad_steps": bad, "config": dataclasses.asdict(config)}
        save_state = save_distributed_state if distributed.active() else save_training_state
        return save_state(out, at, model, optimizer, state, config.keep_last)

    interrupted = False
    main = distributed.is_main()  # under torchrun, rank 0 alone writes metrics and shows progress

    def evaluation(*functions) -> dict:
        if not any(functions):
            return {}
        t = time.perf_counter()
        model.eval()
        figures = {}
        with torch.no_grad():
            for function in functions:
                if function is not None:
                    figures.update(function(model))
        model.train()
        nonlocal elapsed
        elapsed += time.perf_counter() - t
        return figures

    with _stop_on_sigint() as stop, MetricsLog(out / METRICS) if main else nullcontext() as log, \
            tqdm(total=config.max_steps, initial=step, desc=desc, unit="step", dynamic_ncols=True,
                 disable=not main) as bar:
        if evaluate_ends is not None and step == 0:
            record = {"step": 0, **evaluation(evaluate, evaluate_ends)}
            if main:
                log.write(record)
            if postfix:
                bar.set_postfix(postfix(record), refresh=False)
        while step < config.max_steps:
            start = time.perf_counter()
            batch = next(batches)
            n_tokens = batch["input_ids"].numel()  # the global batch's, or this rank's when the source shards itself
            if not getattr(batches, "sharded", False):
                batch = distributed.local_rows(batch)
            elif distributed.active():
                n_tokens = int(distributed.all_reduce(torch.tensor(n_tokens)))
            batch = {k: v.to(device) for k, v in batch.items()}
            fetch_s = time.perf_counter() - start
            empty = n_tokens == 0
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = config.micro_batch_size or config.batch_size
            micro_batches = [dict(zip(batch, parts)) for parts in zip(*(v.split(micro) for v in batch.values()))]
            result = None if empty else accumulate_gradients(model, micro_batches, loss_fn, config.bf16)
            grad_norm = float("nan")
            if result is not None:
                grad_norm = distributed.clip_grad_norm(list(model.parameters()), config.grad_clip or float("inf"))
            ok = result is not None and math.isfinite(grad_norm)
            if ok:
                optimizer.step()
                bad = 0
            elif not empty:
                bad += 1
            optimizer.zero_grad(set_to_none=True)
            # V3 §2.1.2: the bias moves after each step by the load that step saw; a skipped step only resets the count
            distributed.sync_expert_load(model)
            loads = model.update_routing_bias(config.bias_update_speed if ok else 0.0)
            step += 1
            tokens += n_tokens
            seconds = time.perf_counter() - start
            elapsed += seconds
            tokens_per_s = n_tokens / seconds
            source = batches.logs() if hasattr(batches, "logs") else {}
            step_flops = (flops_per_token(model.config, batch["input_ids"].shape[1], mtp=has_mtp) * n_tokens
                          + source.get("generation_flops", 0.0))
            flops += step_flops
            generated += source.get("gen_tokens", 0)
            mfu = step_flops / seconds / peak if peak else None
            record = {"step": step, "loss": result.loss.item() if ok else None, "lr": lr,
                      "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                      "tokens": tokens, "tokens_per_s": round(tokens_per_s, 1),
                      "mfu": round(mfu, 5) if mfu is not None else None,
                      "elapsed_s": round(elapsed, 2), **source}
            if source:
                record["update_tokens_per_s"] = round(n_tokens / max(seconds - fetch_s, 1e-9), 1)
            if ok:
                record.update({k: round(v, 6) for k, v in result.logs.items()})
            else:
                record["skipped"] = True
            if not ok and not empty:
                bar.write(f"warning: step {step}: loss or gradient not finite; step skipped "
                          f"({bad} in a row, abort at {config.max_bad_steps})")
                if bad >= config.max_bad_steps:
                    raise NanoseekError(f"training diverged: {bad} steps in a row with a non-finite loss or gradient "
                                        f"(last at step {step}, lr {lr:.3g}); lower the learning rate")
            record.update(expert_load(loads))
            if step == config.max_steps or (config.eval_every and step % config.eval_every == 0):
                record.update(evaluation(evaluate, evaluate_ends if step == config.max_steps else None))
            if main:
                log.write(record)
            if ok:
                last_loss = record["loss"]
            bar.update(1)
            shown = dict(loss=f"{last_loss:.3f}", tok_s=f"{tokens_per_s:.0f}", lr=f"{lr:.2e}")
            if "mtp_loss" in record:
                shown["mtp"] = f"{record['mtp_loss']:.3f}"
            bar.set_postfix(postfix(record) if postfix else shown, refresh=False)
            if distributed.active():  # every rank stops at the same step
                stop_all = distributed.all_reduce(torch.tensor(int(stop.is_set())), "max")
                if stop_all:
                    stop.set()
            last = distributed.active() and step == config.max_steps  # the final model is consolidated from it
            if step % config.save_every == 0 or stop.is_set() or last:
                checkpoint = save(step)
            if stop.is_set():
                interrupted = True
                bar.write(f"interrupted: saved step {step} to {checkpoint}")
                break
    return TrainResult(step=step, loss=last_loss, tokens=tokens, generated_tokens=generated, elapsed_s=elapsed,
                       tokens_per_s=tokens / elapsed if elapsed else 0.0, flops=flops,
                       mfu=flops / elapsed / peak if elapsed and peak else None, peak_flops=peak,
                       interrupted=interrupted, checkpoint=checkpoint)


def matmul_peak(device: torch.device, bf16: bool = False) -> float | None:
    """The measured matmul FLOP/s that MFU is relative to: the CPU's or the GPU's, probed once per process (so that
    every stage `nanoseek run` trains, and its report, share one measurement); None on devices the probe does not
    know."""
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one device, measured once
        device = torch.device("cuda", torch.cuda.current_device())
    return _measured_peak(device, bf16)


@functools.cache
def _measured_peak(device: torch.device, bf16: bool) -> float | None:
    if device.type not in ("cpu", "cuda"):
        return None
    return measure_matmul_peak(torch.bfloat16 if bf16 else None, device)


@contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """Ctrl-C sets an event that the loop checks after each step (so it saves a whole step and stops); a second
    Ctrl-C interrupts at once. Outside the main thread signals cannot be caught and Ctrl-C behaves as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
