"""Fastformer's additive attention (Wu et al. 2021, *Fastformer: Additive Attention Can Be All You
Need*, arXiv:2108.09084, §3.2): the sequence is summarised into one global query and one global key
per head, O(L · d), no token-by-token scores.

Per head, over the real tokens i (padded ones are left out of both sums):

- α_i = softmax_i(w_qᵀ q_i / √d), global query q_g = Σ_i α_i q_i (eq. 3-4);
- p_i = q_g ⊙ k_i, β_i = softmax_i(w_kᵀ p_i / √d), global key k_g = Σ_i β_i p_i (eq. 5-6);
- u_i = k_g ⊙ v_i, output_i = T u_i + q_i (§3.2: "a linear transformation layer to each
  key-value interaction vector", then "added together with the query vectors").

T is one linear map over all heads' u (hidden × hidden, as the authors' code's ``transform``). The
residual adds the layer's projected query q_i, and BERT's attention output dense (after the
mechanism) then plays the role of the paper's output projection. w_q, w_k (heads, head_dim) and T are
new parameters: w_q = w_k = 0 (both pools start as plain means over the real tokens, a deterministic
start) and T = identity, bias 0 (output_i = u_i + q_i, the paper's block before training).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionMechanism
from .masking import zero_padded_queries


def additive_pool(x: torch.Tensor, weight: torch.Tensor, real: torch.Tensor, dropout: float) -> torch.Tensor:
    """Σ_i softmax_i(wᵀ x_i / √d) x_i over the real tokens: (batch, heads, L, d) -> (batch, heads, d).

    ``weight`` is (heads, d) and ``real`` (batch, L). A row with no real token softmaxes over all
    of them, so that it stays finite (its outputs are zeroed as padded queries).
    """
    compute = torch.promote_types(x.dtype, torch.float32)  # the softmax in float32 at least
    scores = torch.einsum("bhld,hd->bhl", x.to(compute), weight.to(compute)) / math.sqrt(x.shape[-1])
    visible = real | ~real.any(-1, keepdim=True)
    weights = scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1)
    weights = F.dropout(weights, p=dropout)
    return torch.einsum("bhl,bhld->bhd", weights, x.to(compute)).to(x.dtype)


class FastformerAttention(AttentionMechanism):
    """Fastformer's additive attention (see the module docstring); bidirectional only.

    Parameters: ``query_pool`` and ``key_pool`` (heads, head_dim), the paper's w_q and w_k;
    ``transform_weight`` (hidden, hidden) and ``transform_bias`` (hidden,), the paper's transform T.
    """

    supports_causal = False
    bidirectional_reason = 'its global query and key sum over the whole sequence, later tokens included'
    conversion_init = ("fastformer: w_q = w_k = 0 (the global query and key start as means over the real "
                       "tokens), transform T = identity, bias 0")
    no_attention_weights_reason = (
        "additive attention has no query-key weights: each head pools the tokens into one global query and "
        "one global key (per-token pooling weights only)."
    )

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        heads, dim = config.num_attention_heads, config.head_dim
        self.query_pool = nn.Parameter(torch.empty(heads, dim))
        self.key_pool = nn.Parameter(torch.empty(heads, dim))
        self.transform_weight = nn.Parameter(torch.empty(config.hidden_size, config.hidden_size))
        self.transform_bias = nn.Parameter(torch.empty(config.hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """w_q = w_k = 0 (mean pooling over the real tokens) and T = identity, bias 0 (output = u + q)."""
        nn.init.zeros_(self.query_pool)
        nn.init.zeros_(self.key_pool)
        nn.init.eye_(self.transform_weight)
        nn.init.zeros_(self.transform_bias)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: Any = None,
    ) -> torch.Tensor:
        self.refuse_causal(causal)
        batch, heads, length, dim = q.shape
        real = torch.ones(batch, length, dtype=torch.bool, device=q.device) if padding_mask is None \
            else padding_mask.bool()
        dropout = self.dropout if self.training else 0.0
        global_query = additive_pool(q, self.query_pool, real, dropout)  # (batch, heads, d)
        p = global_query[:, :, None, :] * k
        global_key = additive_pool(p, self.key_pool, real, dropout)
        u = global_key[:, :, None, :] * v
        mixed = u.transpose(1, 2).reshape(batch, length, heads * dim)  # T mixes all heads, as the authors' code
        transformed = F.linear(mixed, self.transform_weight.to(u.dtype), self.transform_bias.to(u.dtype))
        context = transformed.view(batch, length, heads, dim).transpose(1, 2) + q
        return zero_padded_queries(context, padding_mask)
