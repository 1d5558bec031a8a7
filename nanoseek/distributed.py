"""Scale-out on PyTorch's own distributed stack: processes started by torchrun, data parallelism with FSDP2, expert
parallelism (model/expert_parallel.py) and the few collectives the training loop needs.

- Processes: `torchrun --nproc-per-node N -m nanoseek pretrain|sft|grpo ...`, or `--nproc N` on those commands,
  which starts torchrun itself (`launch`). gloo on CPU, NCCL on GPUs (one GPU per process, cuda:LOCAL_RANK).
- Data: every rank draws the same global batch and keeps its own contiguous block of rows (`local_rows`), so the
  stream is sharded without overlap and what a run trains on does not depend on the number of ranks.
- FSDP2 (`torch.distributed.fsdp.fully_shard`): each decoder layer is a unit, the root holds the rest (embeddings,
  head, MTP modules); parameters, gradients and optimizer state are sharded across ranks. Gradients are summed
  across ranks (divide factor 1) and the loop divides them by the global count of loss units (target tokens or
  sequences), so N ranks take exactly the step that one process takes on the whole batch.
- The aux-loss-free bias update (V3 §2.1.2) uses the global expert load: the per-expert token counts of every rank
  are summed before the update (`sync_expert_load`), so every rank moves its copy of the bias identically.

Outside torchrun (no process group) every function here is the single-process identity.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

from nanoseek.errors import ConfigError


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (torchrun's RANK before the process group is joined); 0 outside torchrun."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(device: str | None) -> Iterator[None]:
    """Join torchrun's process group for the duration of a command (gloo on CPU, NCCL with one GPU per process);
    nothing outside torchrun."""
    if not launched() or active():
        yield
        return
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `nanoseek ARGV` again under torchrun with `nproc` processes on this machine; returns its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "nanoseek", *argv]
    print(f"nanoseek: starting {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m nanoseek "
          f"{' '.join(argv)}", file=sys.stderr, flush=True)
    return subprocess.call(command)


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def local_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's contiguous block of a global batch's rows."""
    n = world()
    if n == 1:
        return batch
    rows = next(iter(batch.values())).shape[0]
    if rows % n:
        raise ConfigError(f"batch size {rows} is not a multiple of the {n} processes; give --batch-size a multiple")
    size, r = rows // n, rank()
    return {k: v[r * size:(r + 1) * size] for k, v in batch.items()}


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) `t` over the ranks in place; returns it."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def block(items: list) -> tuple[list, bool]:
    """This rank's contiguous block of `items` (block sizes differ by one at most); when the block is empty but
    `items` is not, the first item instead, and True: a ghost that only takes part in the collectives."""
    n, r = world(), rank()
    mine = items[r * len(items) // n:(r + 1) * len(items) // n]
    if not mine and items:
        return items[:1], True
    return mine, False


def all_gather(obj) -> list:
    """Every rank's `obj` (any picklable value), in rank order."""
    if not active():
        return [obj]
    parts: list = [None] * world()
    dist.all_gather_object(parts, obj)
    return parts


def sum_dicts(d: dict[str, float]) -> dict[str, float]:
    """Every rank's {name: number} summed key by key (a key missing on a rank counts 0 there)."""
    if not active():
        return d
    parts = all_gather(d)
    return {k: sum(p.get(k, 0.0) for p in parts) for k in sorted(set().union(*parts))}


def barrier() -> None:
    if active():
        dist.barrier()


def sync_expert_load(model: torch.nn.Module) -> None:
    """Sum every MoE layer's token counts over the ranks, before the routing-bias update."""
    if active():
        for moe in model.moe_layers():
            dist.all_reduce(moe.tokens_per_expert)


def shard(model: torch.nn.Module, expert_parallel: bool = False) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 over all ranks (every rank built the same model from the same seed);
    with expert_parallel, each rank first keeps only its share of the routed experts, which FSDP then leaves
    alone. Gradients are summed, not averaged: the loop divides by the global loss count."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    from nanoseek.model.expert_parallel import distribute_experts

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world(),))
    ignored = set(distribute_experts(model, mesh)) if expert_parallel else set()
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, ignored_params=ignored & set(layer.parameters()) or None)
    # the root unit: embeddings, head, final norm and the MTP modules (which call the shared head outside their
    # own forward, so they are unsharded with the root)
    fully_shard(model, mesh=mesh, ignored_params=ignored or None)
    for name in ("losses", "hidden_states"):  # entry points besides forward
        register_fsdp_forward_method(model, name)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
            # an expert that got no token on one rank still takes part in the reduce-scatter (with zeros)
            module.set_reduce_scatter_unused_params(True)
    return model


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; a plain tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """The global gradient norm over all ranks' shards (sharded or expert-local gradients alike), clipped to
    max_norm; torch's own clip_grad_norm_ in a single process."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not active():
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    if not grads:
        return 0.0
    # every gradient is either a shard of an FSDP parameter or an expert that lives on one rank only: the squares
    # of the local pieces sum to the global squared norm
    squares = torch.stack([local_tensor(g).float().pow(2).sum() for g in grads]).sum()
    norm = float(all_reduce(squares).sqrt())
    if max_norm < float("inf") and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            local_tensor(g).mul_(scale)
    return norm
