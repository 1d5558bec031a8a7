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
reduces to: keep the draft iff it is the argmax of p, so the output is exactly that of plain greedy decoding, and
the whole step (verify, then draft from the accepted position) is one compiled call, `greedy_step`. A batch with
sampled rows needs the host between the two halves (`verify_step`, then `draft_step`).

The MTP module keeps its own latents in the cache (one more layer of the pool): the prompt's are written during
prefill (`prefill_entries`), the entry at the prompt's last position with each sample's first token
(`first_drafts`).
"""
from __future__ import annotations

import torch

from nanoseek.infer.forward import Forward, threads_for
from nanoseek.infer.kv_cache import PagedBatch
from nanoseek.infer.request import Sequence
from nanoseek.infer.sampler import choose, distributions
from nanoseek.model import Transformer


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


# ---- the step's forwards (Forward.decode runs them, compiled) ------------------------------------------------------
def verify_step(model: Transformer, batch: PagedBatch, ids: torch.Tensor):
    """The main model over [last token, draft] (B, 2): hidden states and logits (B, 2, vocab)."""
    h = model.hidden_states(ids, batch)
    return h, model.head(h).float()


def draft_step(model: Transformer, batch: PagedBatch, ids: torch.Tensor, h: torch.Tensor):
    """MTP module 1 over the same two positions, reading the main model's h and the tokens one ahead, ids (B, 2):
    logits (B, 2, vocab) of the tokens two ahead."""
    return (model.mtp_head(0, model.mtp_hidden(0, h, ids, batch)).float(),)


def greedy_step(model: Transformer, batch: PagedBatch, ids: torch.Tensor):
    """verify_step, greedy verification and draft_step in one call: the target logits (B, 2, vocab), their argmax
    (B, 2), whether each draft stood (B,), and each row's next draft (B,)."""
    h, logits = verify_step(model, batch, ids)
    best = logits.argmax(-1)
    accepted = best[:, 0] == ids[:, 1]
    ahead = torch.stack([best[:, 0], torch.where(accepted, best[:, 1], best[:, 0])], dim=1)
    (mtp_logits,) = draft_step(model, batch, ahead, h)
    drafts = mtp_logits.argmax(-1)
    return logits, best, accepted, torch.where(accepted, drafts[:, 1], drafts[:, 0])


def decode(forward: Forward, seqs: list[Sequence]) -> tuple[list[list[int]], torch.Tensor]:
    """One speculative step of every running sequence: its new tokens (the draft and one more when the draft
    stood, else the one token verification gives) and the target logits (B, 2, vocab); sets each one's next
    draft. The sequences' `computed` positions are the caller's to advance."""
    drafts = [s.draft for s in seqs]
    ids = [[s.tokens[-1], s.draft] for s in seqs]
    if all(s.params.greedy and not s.params.penalized for s in seqs):
        logits, best, accepted, nxt = forward.decode(greedy_step, seqs, 2, ids)
        for s, d in zip(seqs, nxt.tolist()):
            s.draft, s.draft_probs = d, None
        return [[d, b[1]] if ok else [b[0]] for ok, d, b in zip(accepted.tolist(), drafts, best.tolist())], logits
    h, logits = forward.decode(verify_step, seqs, 2, ids)
    accepted, first = verify(logits[:, 0], seqs, drafts)
    second, _ = choose(logits[:, 1], seqs, extra=drafts)
    new = [[d, t] if ok else [f] for ok, d, t, f in zip(accepted, drafts, second, first)]
    # after a rejection the second position's MTP entry is stale; the next step rewrites it
    (mtp_logits,) = forward.decode(draft_step, seqs, 2, [[tok[0], tok[-1]] for tok in new], h)
    propose(mtp_logits[torch.arange(len(seqs)), torch.tensor(accepted, dtype=torch.long)], seqs)
    return new, logits


def prefill_entries(forward: Forward, rows: list[tuple[Sequence, int, int]], h: torch.Tensor) -> None:
    """The MTP module's cache entries for a prefill chunk's positions, each from the main hidden state there
    (h (B, T, hidden)) and the next prompt token; the prompt's last position waits for the first sampled token
    (`first_drafts`). rows: (sequence, first position, tokens) of each row of the chunk."""
    keep = [(i, seq, s, min(s + n, len(seq.tokens) - 1) - s) for i, (seq, s, n) in enumerate(rows)]
    keep = [k for k in keep if k[3] > 0]
    for _, seq, s, m in keep:
        seq.complete = s + m
    if not keep:
        return
    T = max(m for *_, m in keep)
    batch = PagedBatch.build(forward.pool, [seq.blocks for _, seq, _, _ in keep], [s for _, _, s, _ in keep],
                             [m for *_, m in keep])
    ids = forward.pad([seq.tokens[s + 1:s + 1 + m] for _, seq, s, m in keep], len(keep), T)
    with threads_for(sum(m for *_, m in keep)):
        forward.model.mtp_hidden(0, h[[i for i, *_ in keep], :T], ids, batch)


def first_drafts(forward: Forward, seqs: list[Sequence], h_last: torch.Tensor) -> None:
    """MTP at each new sample's last prompt position, with its first token (h_last (B, hidden), the main model's
    hidden state there): the entry there, and the first draft."""
    batch = PagedBatch.build(forward.pool, [s.blocks for s in seqs], [s.computed - 1 for s in seqs], [1] * len(seqs))
    ids = torch.tensor([[s.tokens[-1]] for s in seqs], device=h_last.device)
    with threads_for(len(seqs)):
        logits = forward.model.mtp_head(0, forward.model.mtp_hidden(0, h_last.unsqueeze(1), ids, batch))
    propose(logits[:, 0].float(), seqs)
