"""GPTQ: rounding weights to a grid so that the layer's outputs, not its weights, stay close (Frantar et al., 2022).

Round-to-nearest treats each weight alone. GPTQ looks at what the layer computes on real inputs X: it picks the
integers q for one input column at a time and, before the next column, moves the columns not yet rounded so that
they absorb the rounding error of the ones that were, as far as X lets them (the optimal brain surgeon update):

    H = X^T X + damp * mean(diag H) * I              the layer's inputs over a calibration set, damped
    U = upper Cholesky factor of H^-1
    for each column j:  q_j = clamp(round(w_j / s), -qmax, qmax)
                        w_k -= (w_j - q_j s) U[j, k] / U[j, j]       for every column k after j

so that ||X W^T - X (q s)^T|| ends far smaller than round-to-nearest's, while every q and scale is stored exactly as
before (nanoseek.quant's layout does not change). Two of the paper's choices: the scales are fixed up front from the
original weights (`static groups`: the scale of a group is max|w| / qmax, as round-to-nearest has it), and the
columns are taken in order of decreasing diag(H) (`act order`: the inputs with most energy are rounded first, while
the most columns are left to absorb their error). On the tiny R1 checkpoint, int4 with groups of 64: logits' relative
error 0.100 with round-to-nearest, 0.066 with GPTQ on 128 training problems; held-out accuracy 34.8% and 38.6%
against 39.1% in float32 (440 problems).

The calibration set is worked training problems in the chat format (`calibration_sequences`), prompt and reasoning
as the model sees them; `hessians` runs the float model on it once and sums X^T X at the input of every nn.Linear
and of every routed expert's three matrices, from the tokens routed to that expert only.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from nanoseek.data import generate_mix
from nanoseek.model.attention import MLA
from nanoseek.model.moe import Experts, expert_weight_name
from nanoseek.tokenizer import Tokenizer, chat_ids

DAMP = 0.01                 # the paper's dampening: 1% of the mean diagonal
CALIBRATION_PROBLEMS = 128  # `nanoseek quantize --calibrate`'s default and `nanoseek run`'s
CALIBRATION_SEED = 7        # training-split problems; the held-out ones never calibrate


def calibration_sequences(tokenizer: Tokenizer, n: int, seq_len: int = 256,
                          seed: int = CALIBRATION_SEED) -> list[list[int]]:
    """n worked training problems, each as the chat-template token ids of question, reasoning and answer."""
    messages = ([{"role": "user", "content": p.prompt},
                 {"role": "assistant", "content": p.answer, "reasoning_content": p.reasoning}]
                for p in generate_mix(n, seed, "train"))
    return [chat_ids(tokenizer, m)[0][:seq_len] for m in messages]


@torch.no_grad()
def hessians(model: nn.Module, sequences: Sequence[Sequence[int]], progress: bool = False) -> dict[str, torch.Tensor]:
    """Weight name -> X^T X (in_features, in_features) of the inputs X every nn.Linear of `model`, and every routed
    expert's matrix (under its per-expert name), received while the model (MTP modules included) read `sequences`,
    one at a time. A weight that received nothing is absent."""
    sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if len(x):
            sums[name] = sums.get(name, 0) + x.t() @ x

    def linear_hook(name: str):
        return lambda module, inputs, output: accumulate(name, inputs[0])

    def linear_output_hook(name: str):
        return lambda module, inputs, output: accumulate(name, output)

    def experts_hook(name: str):
        def hook(module: Experts, inputs: tuple, output: torch.Tensor) -> None:
            x, _, indices = inputs
            for e in range(module.n_experts):
                mine = x[(indices == e).any(dim=-1)]                   # the tokens routed to expert e
                gate, up, _ = module.matrices(e)
                accumulate(expert_weight_name(name, e, "gate_proj"), mine)
                accumulate(expert_weight_name(name, e, "up_proj"), mine)
                accumulate(expert_weight_name(name, e, "down_proj"), module.activation(mine, gate, up))
        return hook

    handles = [m.register_forward_hook(linear_hook(name + ".weight")) for name, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    handles += [m.register_forward_hook(experts_hook(name)) for name, m in model.named_modules()
                if isinstance(m, Experts)]
    # MLA uses kv_b_proj as a matrix, not through its forward (model/attention.py): its input is kv_a_layernorm's output
    handles += [m.kv_a_layernorm.register_forward_hook(linear_output_hook(name + ".kv_b_proj.weight"))
                for name, m in model.named_modules() if isinstance(m, MLA)]
    was_training = model.training
    model.eval()
    try:
        for ids in tqdm(sequences, desc="calibrating", unit="sequence", disable=not progress):
            ids = torch.tensor([list(ids)])
            model.losses(ids[:, :-1], ids[:, 1:])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums


def gptq(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """w (N, K), hessian (K, K), scale (N, groups) with groups dividing K -> q (N, K) in [-qmax, qmax], int8: the
    integers that, times their group's scale, reproduce X w^T closely for inputs X with X^T X = hessian."""
    N, K = w.shape
    group = K // scale.shape[1]
    H = hessian.double().clone()
    dead = H.diagonal() == 0                  # an input that was always zero: nothing to fit, round to nearest
    H[dead, dead] = 1.0
    H += DAMP * H.diagonal().mean() * torch.eye(K, dtype=H.dtype)
    order = torch.argsort(H.diagonal(), descending=True)          # act order
    H = H[order][:, order]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    W = w.double()[:, order].clone()
    s = scale.double().repeat_interleave(group, dim=1)[:, order]   # each column keeps its own group's scale
    q = torch.zeros_like(W)
    for j in range(K):
        q[:, j] = torch.where(s[:, j] > 0, W[:, j] / s[:, j], 0.0).round().clamp(-qmax, qmax)
        error = (W[:, j] - q[:, j] * s[:, j]) / U[j, j]
        W[:, j + 1:] -= error.unsqueeze(1) * U[j, j + 1:].unsqueeze(0)
    return q[:, torch.argsort(order)].to(torch.int8)
