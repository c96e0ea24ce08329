"""Longformer's attention: a (dilated) sliding window plus global tokens (Beltagy et al. 2020, §3.1).

Query i attends key j iff |i - j| ≤ d · w/2 and d divides i - j, with w = ``attention_window``
(even, as in Transformers' ``LongformerConfig``; one value or one per layer) and d the head's
``attention_dilation`` (§3.1 "Dilated Sliding Window"; one value or one per head). Causal: only
j ≤ i. Global tokens (``global_attention_mask`` = 1, plus the special tokens) are seen by every
query, and their own queries attend every key through separate projections ``query_global``,
``key_global`` and ``value_global`` of the hidden states (§3.1 "Linear Projections for Global
Attention"), as Transformers' ``LongformerSelfAttention`` does.

A dilated head runs on the positions in residue order (mod d), where its window is contiguous.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocksparse import BlockSparseAttention
from .ops.layout import HeadGroup, KeyBlocks, Part, Predicate, head_runs, residue_order, round_up

#: Query blocks are about as long as the one-sided window (the fastest on CPU, measured), in
#: multiples of this, so that a block sees its neighbours on each side and little more.
BLOCK_MULTIPLE = 16


class SlidingWindowAttention(BlockSparseAttention):
    """Longformer: sliding window with per-head dilation and global tokens with their own projections.

    Config (``EffzooLongformerConfig``, which holds the defaults and checks): ``attention_window``
    (even; int or one per layer), ``attention_dilation`` (int or one per head), plus the engine's
    fields. Parameters: ``query_global``, ``key_global``, ``value_global``
    (hidden → hidden). Extra forward inputs: ``global_attention_mask`` (batch, L) and
    ``hidden_states`` (batch, L, hidden), the layer's input, which the global projections read.
    Decoding keeps max(dilation) · attention_window / 2 + 1 tokens and the sink per layer.
    """

    supports_causal = True
    conversion_init = "query/key/value_global copied from the layer's query/key/value (Longformer's recipe)"

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.one_sided_window = config.layer_window(layer_idx) // 2
        self.dilations = config.head_dilations()
        self.block_size = round_up(self.one_sided_window, BLOCK_MULTIPLE)
        self.query_global = nn.Linear(config.hidden_size, config.hidden_size)
        self.key_global = nn.Linear(config.hidden_size, config.hidden_size)
        self.value_global = nn.Linear(config.hidden_size, config.hidden_size)

    def init_from_projections(self, query: nn.Linear, key: nn.Linear, value: nn.Linear) -> None:
        """Global projections start as copies of the local ones (Beltagy et al. 2020, §5)."""
        with torch.no_grad():
            for own, local in ((self.query_global, query), (self.key_global, key), (self.value_global, value)):
                own.load_state_dict(local.state_dict())

    def padded_length(self, length: int) -> int:
        return round_up(length, self.block_size)

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        device = lengths.device
        side = -(-self.one_sided_window // self.block_size)  # neighbour blocks on each side
        num_blocks, after = padded_length // self.block_size, 0 if causal else side
        groups = []
        for heads, dilation in head_runs(self.dilations):
            order = residue_order(padded_length, dilation, device) if dilation > 1 else None
            keys = KeyBlocks.neighbours(
                num_blocks, side, after, self.block_size, order, self._window_of(dilation), device
            )
            groups.append(HeadGroup(heads, (Part(self.block_size, (keys,), order),)))
        return groups

    def _window_of(self, dilation: int) -> Predicate:
        """|i - j| ≤ d · w/2 and d divides i - j."""

        def allowed(query_position: torch.Tensor, key_position: torch.Tensor) -> torch.Tensor:
            distance = query_position - key_position
            within = distance.abs() <= dilation * self.one_sided_window
            return within if dilation == 1 else within & (distance % dilation == 0)

        return allowed

    @classmethod
    def cache_window(cls, config: Any, layer_idx: int) -> int:
        return config.layer_window(layer_idx) // 2 * max(config.head_dilations()) + 1

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
        global_attention_mask: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        def global_attention(rows: torch.Tensor) -> torch.Tensor:
            return self.global_attention(hidden_states, rows, padding_mask, q.shape[1]).to(q.dtype)

        def global_attention_weights(rows: torch.Tensor) -> torch.Tensor:
            return self.global_attention_weights(hidden_states, rows, padding_mask, q.shape[1]).to(q.dtype)

        return self.attend(q, k, v, padding_mask, causal, cache, global_attention_mask, global_attention,
                           global_attention_weights, output_attentions)

    def global_attention(
        self, hidden_states: torch.Tensor | None, rows: torch.Tensor, padding_mask: torch.Tensor | None, num_heads: int
    ) -> torch.Tensor:
        """Context of the global tokens at ``rows`` (batch, g): (batch, heads, g, head_dim).

        Their ``query_global`` queries attend every real token's ``key_global`` key and read its
        ``value_global`` value. Both projections are linear, so they fold into the g queries and
        the g outputs instead of running over all L tokens: with h' = [h, 1] and W' = [W, b],
        q·(W_k h + b_k) = (W'_kᵀ q)·h' and Σ_j p_j (W_v h_j + b_v) = W'_v (Σ_j p_j h'_j). That is
        O(g · L · hidden) instead of O(L · hidden²), and exact (dropout on p included).
        """
        folded, tokens, real = self._folded_global_queries(hidden_states, rows, padding_mask, num_heads)
        batch, _, num_global, width = folded.shape
        mixed = F.scaled_dot_product_attention(
            folded.reshape(batch, 1, num_heads * num_global, width), tokens, tokens,
            attn_mask=real[:, None, None, :], dropout_p=self.attention_dropout(tokens),
            scale=(hidden_states.shape[-1] // num_heads) ** -0.5,
        ).view(batch, num_heads, num_global, width)
        return torch.einsum("bhgk,hdk->bhgd", mixed, self._per_head_with_bias(self.value_global, num_heads).to(mixed.dtype))

    def global_attention_weights(
        self, hidden_states: torch.Tensor | None, rows: torch.Tensor, padding_mask: torch.Tensor | None, num_heads: int
    ) -> torch.Tensor:
        """The softmax weights of the global tokens at ``rows`` over every token: (batch, heads, g, L),
        zero on padding; those of :meth:`global_attention` before dropout, from the same folded queries."""
        folded, tokens, real = self._folded_global_queries(hidden_states, rows, padding_mask, num_heads)
        scores = folded @ tokens.transpose(-1, -2) * (hidden_states.shape[-1] // num_heads) ** -0.5
        return scores.masked_fill(~real[:, None, None, :], float("-inf")).softmax(-1)

    @staticmethod
    def _per_head_with_bias(linear: nn.Linear, num_heads: int) -> torch.Tensor:
        """W' = [W, b] split by head: (heads, head_dim, hidden + 1)."""
        hidden = linear.weight.shape[1]
        return torch.cat([linear.weight, linear.bias[:, None]], dim=1).view(num_heads, -1, hidden + 1)

    def _folded_global_queries(
        self, hidden_states: torch.Tensor | None, rows: torch.Tensor, padding_mask: torch.Tensor | None, num_heads: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The global queries folded with ``key_global`` (batch, heads, g, hidden + 1), the tokens h'
        they score (batch, 1, L, hidden + 1), and which tokens are real (batch, L; all of them for
        an empty sequence, so that its rows stay finite)."""
        if hidden_states is None:
            raise ValueError(
                "SlidingWindowAttention needs hidden_states (the layer input, batch × L × hidden) for its global "
                "projections: pass hidden_states=..., or set global_special_tokens=False and give no "
                "global_attention_mask."
            )
        batch, length, hidden = hidden_states.shape
        global_hidden = hidden_states.gather(1, rows[:, :, None].expand(-1, -1, hidden))
        queries = self.query_global(global_hidden).view(batch, rows.shape[1], num_heads, hidden // num_heads)
        key_global = self._per_head_with_bias(self.key_global, num_heads).to(queries.dtype)
        folded = torch.einsum("bghd,hdk->bhgk", queries, key_global)
        tokens = torch.cat([hidden_states, hidden_states.new_ones(batch, length, 1)], dim=-1)[:, None]
        real = torch.ones(batch, length, dtype=torch.bool, device=rows.device) if padding_mask is None else padding_mask
        real = real | ~real.any(-1, keepdim=True)
        return folded.to(tokens.dtype), tokens, real
