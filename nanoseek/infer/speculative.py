"""MTP self-speculative decoding (V3 report §2.2 "MTP in inference", §5.4.3: 85-90% of second tokens accepted,
1.8x tokens per second).

The MTP module predicts the token after next from the main model's last hidden state and the next token, so
each step the engine feeds the main model two tokens, the last one sampled and the MTP's draft of the one after
it, and gets both of their distributions from one forward:
  * the first position's distribution p decides whether the draft stands (`verify`); the token it yields is
    always distributed as plain decoding would give it;
  * if the draft stands, the second position's distribution gives one more token for free.
Then the MTP module runs over the same two positions and drafts again (`propose`). The acceptance rule is that
of speculative sampling (Leviathan et al. 2023, §2.3; Chen et al. 2023, Algorithm 2): keep the draft x ~ q
with probability min(1, p(x) / q(x)), otherwise draw from max(0, p - q), normalised. Under greedy decoding it
reduces to: keep the draft iff it is the argmax of p, so the output is exactly that of plain greedy decoding.
"""
from __future__ import annotations

import torch

from nanoseek.infer.sampler import choose, distributions


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator) -> tuple[bool, int]:
    """One speculative-sampling decision: target distribution p (V,), draft distribution q (V,), draft ~ q.
    Returns (whether the draft stands, the token to emit), the token distributed exactly as p."""
    u = torch.rand((), generator=generator, device=p.device)
    if u * q[draft] < p[draft]:  # u < p(x) / q(x), without dividing
        return True, draft
    residual = (p - q).clamp_min(0)
    if residual.sum() <= 0:  # p == q up to rounding: the draft could not have been rejected
        return True, draft
    return False, int(torch.multinomial(residual, 1, generator=generator))


def verify(logits: torch.Tensor, rows, drafts: list[int]) -> tuple[list[bool], list[int]]:
    """Target logits (B, V) at each row's first fed position -> whether its draft stands, and the token there."""
    argmax, probs = distributions(logits, rows)
    accepted, tokens = [], []
    for i, row in enumerate(rows):
        if row.params.greedy:
            ok, token = argmax[i] == drafts[i], argmax[i]
        else:
            ok, token = accept_draft(probs[i], row.draft_probs, drafts[i], row.generator)
        accepted.append(ok)
        tokens.append(token)
    return accepted, tokens


def propose(logits: torch.Tensor, rows) -> None:
    """MTP logits (B, V) -> each row's next draft (`row.draft`), and the distribution it was drawn from
    (`row.draft_probs`), which `verify` needs."""
    drafts, probs = choose(logits, rows)
    for i, row in enumerate(rows):
        row.draft = drafts[i]
        row.draft_probs = None if row.params.greedy else probs[i]
