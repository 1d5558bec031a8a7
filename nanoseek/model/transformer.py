"""The DeepSeek-V3 model: embedding, blocks, final norm, output head, MTP modules, and the training losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import Block
from nanoseek.model.moe import Experts, MoE, update_bias
from nanoseek.model.mtp import MTPModule, mtp_inputs, mtp_targets
from nanoseek.model.norm import RMSNorm
from nanoseek.model.rope import RotaryEmbedding


@dataclass
class Losses:
    main: torch.Tensor                 # next-token cross-entropy
    mtp: list[torch.Tensor]            # one cross-entropy per MTP depth
    balance: torch.Tensor              # sum over MoE layers of the sequence-wise balance term (without α)

    def total(self, mtp_weight: float = 0.3, balance_weight: float = 1e-4) -> torch.Tensor:
        """L = L_main + λ/D Σ_k L_MTP^k (V3 Eq. 25) + α L_bal (Eq. 17). V3 uses λ = 0.3, then 0.1; α = 1e-4."""
        loss = self.main + balance_weight * self.balance
        if self.mtp:
            loss = loss + mtp_weight / len(self.mtp) * sum(self.mtp)
        return loss


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(config, k) for k in range(config.num_nextn_predict_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, Experts):
            for w in module.parameters():
                nn.init.normal_(w, std=std)
        elif isinstance(module, MoE):
            nn.init.normal_(module.gate.weight, std=std)

    def _rope(self, input_ids: torch.Tensor, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the tokens' positions: the cache's, else 0..T-1."""
        if cache is not None:
            return self.rotary(cache.positions)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        return self.rotary(positions)

    def hidden_states(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """The last block's output before the final norm, (batch, seq, hidden); MTP module 1 reads it. With a cache
        (infer/kv_cache.py PagedBatch), the tokens sit at its positions and attend over what it holds."""
        cos, sin = self._rope(input_ids, cache)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, cache)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and output head: hidden states (..., hidden) -> logits (..., vocab)."""
        return self.lm_head(self.norm(h))

    def forward(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """input_ids (batch, seq) -> logits (batch, seq, vocab)."""
        return self.head(self.hidden_states(input_ids, cache))

    def mtp_hidden(self, depth: int, h_prev: torch.Tensor, next_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """MTP module `depth` (0-based) on h_prev (batch, seq, hidden) and the embeddings of next_ids (batch, seq),
        the tokens one ahead: its hidden state, whose `mtp_head` predicts the token two ahead."""
        cos, sin = self._rope(next_ids, cache)
        return self.mtp[depth](h_prev, self.embed_tokens(next_ids), cos, sin, cache)

    def mtp_head(self, depth: int, h: torch.Tensor) -> torch.Tensor:
        """MTP module `depth`'s norm, then the output head shared with the main model (V3 §2.2)."""
        return self.lm_head(self.mtp[depth].norm(h))

    def losses(self, input_ids: torch.Tensor, labels: torch.Tensor, mtp: bool = True) -> Losses:
        """Cross-entropies for (batch, seq) inputs and labels (labels[i] = t_{i+1}; -100 is ignored); with
        mtp=False the MTP modules do not run (their losses are left out)."""
        h = self.hidden_states(input_ids)
        main = self._head_loss(self.norm, h, labels)
        mtp_losses = []
        depths = len(self.mtp) if mtp else 0
        for k in range(1, depths + 1):
            T = input_ids.shape[1] - k
            if T <= 0:
                break
            h = self.mtp_hidden(k - 1, h[:, :T], mtp_inputs(input_ids, k))
            mtp_losses.append(self._head_loss(self.mtp[k - 1].norm, h, mtp_targets(labels, k)))
        aux = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        balance = torch.stack(aux).sum() if aux and self.training else main.new_zeros(())
        return Losses(main, mtp_losses, balance)

    def _head_loss(self, norm: nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the positions that have a label; the output head (a fifth of a tiny model's
        FLOPs) runs on those only, e.g. on the assistant tokens of an SFT batch."""
        keep = labels != -100
        return F.cross_entropy(self.lm_head(norm(h[keep])).float(), labels[keep])

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    @torch.no_grad()
    def update_routing_bias(self, gamma: float) -> list[torch.Tensor]:
        """Apply the aux-loss-free bias update to every MoE layer from the load counted since the last call,
        then reset the counters. Returns each layer's load (tokens per expert) for logging."""
        loads = []
        for moe in self.moe_layers():
            load = moe.tokens_per_expert.clone()
            bias = moe.gate.e_score_correction_bias
            bias.copy_(update_bias(bias, load, gamma))
            moe.tokens_per_expert.zero_()
            loads.append(load)
        return loads

