"""Expert parallelism (V3 §3.2 trains with 64-way EP): the routed experts of every MoE layer are split across ranks,
and tokens travel to the rank that holds their expert and back by all-to-all.

With E experts and N ranks, rank r holds experts [r E/N, (r+1) E/N): those rows of each of the layer's stacked
matrices, as a DTensor sharded by expert, so that distributed checkpoints reshard them like any other parameter (a
run saved with expert parallelism resumes without it, and the other way round). A layer's forward on each rank:
1. route its tokens and sort the (token, expert) pairs by expert, hence by the rank that owns the expert;
2. exchange the per-expert counts, then the token vectors (dispatch all-to-all);
3. run each local expert once on everything it received from all ranks;
4. send the outputs back (combine all-to-all) and add them, gate-weighted, to their tokens.
Both all-to-alls are differentiable (the backward of one is the other with the splits swapped), so the gradient of
an expert sums the contributions of every rank's tokens, exactly as if all tokens had been routed in one process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from nanoseek.errors import ConfigError
from nanoseek.model.moe import Experts, combine, sort_by_expert


class _AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with the given row splits; its gradient is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class ExpertParallel:
    """The routed-expert computation of one MoE layer whose experts are spread over the ranks of `group`."""

    def __init__(self, n_experts: int, group):
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.per_rank = n_experts // self.world
        self.local = range(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)

    def __call__(self, experts: Experts, x: torch.Tensor, weights: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        order, token_of, counts = sort_by_expert(indices, self.world * self.per_rank)
        # received[s, j]: how many tokens rank s sends to this rank's j-th expert
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=self.group)
        send_splits = counts.view(self.world, self.per_rank).sum(1).tolist()
        recv_splits = received.view(self.world, self.per_rank).sum(1).tolist()
        inbox = _AllToAll.apply(x[token_of], recv_splits, send_splits, self.group)
        # inbox holds rank 0's tokens for local experts 0..J-1, then rank 1's, ...: run each expert on all of its own
        sizes = received.tolist()
        pieces = list(inbox.split(sizes))
        J = self.per_rank
        # every local expert runs, an idle one on no rows: the rank's slice of each stack then always has a gradient,
        # as the whole stack has in one process, so the optimizer steps it alike (weight decay, moments)
        local = zip(*(m.to_local().unbind(0) for m in (experts.gate_proj, experts.up_proj, experts.down_proj)))
        for j, matrices in enumerate(local):
            mine = [s * J + j for s in range(self.world)]
            out = experts.ffn(torch.cat([pieces[i] for i in mine]), *matrices)
            for i, part in zip(mine, out.split([sizes[i] for i in mine])):
                pieces[i] = part
        outbox = _AllToAll.apply(torch.cat(pieces), send_splits, recv_splits, self.group)
        return combine(x, outbox, weights, order, token_of)


def distribute_experts(model: nn.Module, mesh: DeviceMesh) -> list[nn.Parameter]:
    """Keep only this rank's slice of every MoE layer's stacked expert matrices (the rest is dropped), as a DTensor
    sharded by expert over `mesh` (so distributed checkpoints know which rank holds which experts), and switch the
    layers to all-to-all dispatch; returns the parameters kept here."""
    world = mesh.size()
    kept = []
    for moe in model.moe_layers():
        if moe.n_experts % world:
            raise ConfigError(f"expert parallelism needs the {moe.n_experts} routed experts to split evenly over "
                              f"{world} processes")
        moe.expert_parallel = ExpertParallel(moe.n_experts, mesh.get_group())
        local = moe.expert_parallel.local
        for name, stack in list(moe.experts.named_parameters()):
            mine = stack.detach()[local.start:local.stop].clone()
            kept.append(nn.Parameter(DTensor.from_local(mine, mesh, [Shard(0)], run_check=False)))
            setattr(moe.experts, name, kept[-1])
    return kept
