"""Linformer (Wang et al. 2020, *Linformer: Self-Attention with Linear Complexity*, arXiv:2006.04768):
keys and values projected along the sequence to k rows, softmax(Q (E K)ᵀ / √d) (F V) (eq. 7).

E and F are learned (k × ``max_position_embeddings``) matrices, used on the actual length. A
sequence's compressible tokens (its real tokens, without the special tokens kept exact) are packed
by rank (``pooling.pack_by_rank``), so padding, left or right, never reaches the projection. At
n such tokens, rank r reads column c(r) = ⌊(r + ½) · N / n⌋ of the N-column matrix: the n tokens
are spread over the whole matrix, the middle of each of n equal parts of it. Each row is then
rescaled to carry, on those n columns, the row's whole absolute weight Σ_c |E_ic| (its sum over
all N columns): at n = N without padding that is E itself, the paper's formula; a row that reads
none of its columns is an empty key, masked.

With ``projection_init="pooling"`` row i starts as the mean over segment i of the N columns
(``pooling.segment_mean_matrix``); read at n tokens it is the mean of the tokens of rank r with
⌊(r + ½) · k / n⌋ = i when k divides N: k segments of the actual length, and every token its own
row when n ≤ k, which is exact attention.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import AttentionMechanism
from .pooling import attend_compressed, compressible_tokens, pack_by_rank, segment_mean_matrix


def length_projection(matrix: torch.Tensor, counts: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of (heads or 1, k, N) ``matrix`` at each row's ``counts`` (batch,) packed tokens.

    Returns (batch, heads or 1, k, length) weights, zero past a row's tokens, and (batch, k), which
    rows read at least one of their columns. Rank r reads column ⌊(2r + 1) · N / (2n)⌋ and each row
    is rescaled by Σ_c |E_ic| / Σ_r |E_i c(r)|, so that its real tokens carry its whole weight."""
    positions = matrix.shape[-1]
    rank = torch.arange(length, device=matrix.device)
    tokens = counts.clamp(min=1)[:, None]
    column = ((2 * rank + 1) * positions // (2 * tokens)).clamp(max=positions - 1)  # (batch, length)
    weights = matrix[:, :, column].permute(2, 0, 1, 3) * (rank < counts[:, None])[:, None, None, :]
    received = weights.abs().sum(-1)
    scale = matrix.abs().sum(-1) / received.clamp(min=torch.finfo(received.dtype).tiny)
    # A row of one head that reads only zeros gets a zero key there; the mask is per row of the layer.
    return weights * scale[..., None], (received > 0).any(1)


class LinformerAttention(AttentionMechanism):
    """Linformer's attention, bidirectional, over any length up to ``max_position_embeddings``.

    Config fields (``LinformerConfig``, which holds the defaults and checks): ``projected_length``,
    ``projection_sharing``, ``projection_init``, ``global_special_tokens``. Parameters:
    ``key_projection`` E and (unless ``projection_sharing="key_value"``) ``value_projection`` F, each
    (heads, k, max_position_embeddings) for ``"none"``, (1, k, max_position_embeddings) otherwise.
    """

    supports_causal = False
    bidirectional_reason = 'each projected row mixes every position, future ones included'
    no_attention_weights_reason = (
        "linformer's queries attend projected rows (mixtures of tokens), not tokens, so there are no "
        "per-token weights."
    )
    conversion_init = ("Linformer projections E and F: mean pooling over projected_length segments of the real "
                       "tokens (projection_init='pooling'; 'gaussian': the paper's N(0, 1/k) entries)")

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.projected_length = config.projected_rows()
        self.max_positions = config.max_position_embeddings
        self.projection_init = config.projection_init
        self.global_special_tokens = config.global_special_tokens
        heads = config.num_attention_heads if config.projection_sharing == "none" else 1
        shape = (heads, self.projected_length, self.max_positions)
        self.key_projection = nn.Parameter(torch.empty(shape))
        self.value_projection = None if config.projection_sharing == "key_value" else nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def projections(self) -> list[nn.Parameter]:
        """E, and F where keys and values have their own."""
        return [p for p in (self.key_projection, self.value_projection) if p is not None]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """E and F as ``projection_init`` says: segment means (every head alike), or N(0, 1/k) entries."""
        for projection in self.projections():
            if self.projection_init == "pooling":
                pooling = segment_mean_matrix(self.projected_length, self.max_positions)
                projection.copy_(pooling.to(projection.device, projection.dtype).expand_as(projection))
            else:
                projection.normal_(0.0, 1.0 / math.sqrt(self.projected_length))

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
    ) -> torch.Tensor:
        self.refuse_causal(causal)
        batch, _, length, _ = k.shape
        if length > self.max_positions:
            raise ValueError(
                f"linformer: a sequence of {length} tokens is longer than its projection, which has "
                f"max_position_embeddings={self.max_positions} columns; truncate the input to "
                f"{self.max_positions} tokens or convert with a larger --max-position-embeddings."
            )
        keep, special = compressible_tokens(padding_mask, batch, length, False, self.global_special_tokens, k.device)
        counts = keep.sum(-1)
        key_weights, rows = length_projection(self.key_projection, counts, length)
        keys = key_weights.to(k.dtype) @ pack_by_rank(k, keep)
        value_weights = key_weights if self.value_projection is None else \
            length_projection(self.value_projection, counts, length)[0]
        values = value_weights.to(v.dtype) @ pack_by_rank(v, keep)
        return attend_compressed(q, keys, values, rows, k, v, special, padding_mask, self.attention_dropout(q))
