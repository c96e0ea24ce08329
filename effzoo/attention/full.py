"""Exact softmax attention on ``torch.nn.functional.scaled_dot_product_attention``.

The ``full`` variant's mechanism: BERT's attention, the baseline of every benchmark and the
proof that the backbone and the conversion are exact. Padding reaches SDPA as a broadcast
(batch, 1, 1, L) key mask and causality as ``is_causal``; a causal batch with padding is
reordered real-tokens-first so that ``is_causal`` stays exact. No L×L tensor is built, except
the (query_length × key_length) mask of a multi-token step on top of a padded cache, and the
weights themselves when ``output_attentions=True`` asks for them (BERT's eager path).
"""

from __future__ import annotations

from typing import Any

import math

import torch
import torch.nn.functional as F

from .base import AttentionMechanism
from .masking import (
    gather_positions,
    key_padding_attn_mask,
    real_tokens_first_order,
    scatter_positions,
    zero_padded_queries,
)
from .reference import padding_and_causal_pattern


class FullAttention(AttentionMechanism):
    """softmax(QKᵀ/√d) V (Vaswani et al. 2017, eq. 1), exact, bidirectional or causal."""

    supports_causal = True
    attention_weights_layout = "dense"

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout_p = self.attention_dropout(q)
        query_length, key_length = q.shape[-2], k.shape[-2]
        causal = causal and query_length > 1  # a single new token sees the whole cache
        if output_attentions:
            return eager_attention(q, k, v, padding_mask, causal, dropout_p)

        if padding_mask is None:
            if causal and query_length != key_length:
                mask = padding_and_causal_pattern(None, query_length, key_length, True, q.device)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)

        if not causal:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=key_padding_attn_mask(padding_mask), dropout_p=dropout_p
            )
        elif query_length == key_length:
            order = real_tokens_first_order(padding_mask)
            packed = F.scaled_dot_product_attention(
                gather_positions(q, order),
                gather_positions(k, order),
                gather_positions(v, order),
                dropout_p=dropout_p,
                is_causal=True,
            )
            context = scatter_positions(packed, order)
        else:
            allowed = padding_and_causal_pattern(padding_mask, query_length, key_length, True, q.device)
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # finite rows for padded queries
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        return zero_padded_queries(context, padding_mask)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding_mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's eager path: the (batch, heads, query_length, key_length) weights, formed, and the context.

    Used only when the weights are asked for. As in ``BertModel(attn_implementation="eager")`` the
    weights returned are those after dropout; rows of padded queries are zeros, as their context is.
    """
    allowed = padding_and_causal_pattern(padding_mask, q.shape[-2], k.shape[-2], causal, q.device)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
    if dropout_p:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return torch.matmul(weights, v), weights
