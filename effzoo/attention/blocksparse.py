"""The base of every sparse pattern: a block layout run by the block-sparse engine.

A pattern gives its block layout (``ops/layout.py``); this class does what every pattern shares
around the engine (``ops/block_attention.py``): it packs a padded batch, finds the global tokens
(the special tokens, the user's ``global_attention_mask``, the pattern's own), chooses the dense,
block or flex path, returns the sparse attention weights, and decodes with a cache, where the
layout becomes a predicate on positions.

Positions are those of the real tokens: a padded batch is reordered real tokens first, so left,
right and middle padding give the same outputs as the sequence alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from .base import AttentionMechanism
from .checks import non_negative_int
from .kv_cache import GrowingKeyValueLayer, SinkSlidingWindowLayer
from .masking import gather_positions, real_tokens_first_order, scatter_positions
from .ops.attention_weights import block_sparse_attention_weights
from .ops.block_attention import block_sparse_attention
from .ops.global_tokens import GlobalTokens, global_token_mask
from .ops.layout import HeadGroup


class BlockSparseAttention(AttentionMechanism):
    """Base of every sparse pattern: padding, global tokens, caches and the dense fallback.

    A subclass reads its config fields (the config holds their defaults and checks) and gives its
    layout: :meth:`padded_length`, :meth:`head_groups` and, optionally,
    :meth:`pattern_global_tokens` and :meth:`cache_window`. Config fields every pattern reads
    (``BlockSparseConfig``): ``global_special_tokens``, ``dense_attention_below`` (padded lengths
    below it run one dense SDPA with the pattern as a mask: O(L²) memory; measured on MiniLM, batch
    8 at 900 tokens, 1.7x slower and 2.2x the memory of the block path, so only for short inputs)
    and ``flex_attention_from`` (see ``flex.py``). Extra forward input:
    ``global_attention_mask`` (batch, L), 1 for global tokens (Longformer's convention).

    Attention weights (``output_attentions=True``) are ``"sparse"``: a coalesced
    ``torch.sparse_coo_tensor`` of shape (batch, heads, L, L) whose stored entries are exactly the
    (query, key) pairs the forward attended (window, random blocks as drawn in that forward, global
    rows and columns) and whose values are their softmax weights; padded queries have none. They
    are formed per chunk of the gathered blocks, never as an L×L tensor, and are the weights before
    attention dropout (in training, dropout's mask is not in them). Decoding with a cache has none.
    """

    supports_causal = True
    attention_weights_layout = "sparse"

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.global_special_tokens = bool(config.global_special_tokens)
        self.dense_attention_below = non_negative_int(
            "dense_attention_below", config.dense_attention_below, "Use 0 to always take the block-sparse path."
        )
        self.flex_attention_from = None if config.flex_attention_from is None else non_negative_int(
            "flex_attention_from", config.flex_attention_from,
            "Use None to never take the compiled flex attention path.",
        )

    # -- the layout, given by each pattern ---------------------------------------------------

    def padded_length(self, length: int) -> int:
        """The length the layout needs for ``length`` tokens (a block multiple, at least ``length``)."""
        raise NotImplementedError

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        """The layout of a packed batch with ``lengths`` real tokens, padded to ``padded_length``."""
        raise NotImplementedError

    def pattern_global_tokens(self, lengths: torch.Tensor, padded_length: int) -> torch.Tensor | None:
        """(batch, padded_length) bool tokens the pattern itself makes global (BigBird's end blocks)."""
        return None

    @classmethod
    def cache_window(cls, config: Any, layer_idx: int) -> int | None:
        """How many tokens back (the query included) causal decoding needs; None: all of them."""
        return None

    @classmethod
    def new_cache(cls, config: Any) -> Cache:
        """A sliding-window cache with attention sinks when the pattern is local, else every key in
        buffers that grow (both O(1) per new token to update)."""
        windows = [cls.cache_window(config, layer) for layer in range(config.num_hidden_layers)]
        if any(window is None for window in windows):
            return Cache(layers=[GrowingKeyValueLayer() for _ in windows])
        return Cache(layers=[SinkSlidingWindowLayer(sliding_window=window) for window in windows])

    # -- forward -------------------------------------------------------------------------------

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
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.attend(q, k, v, padding_mask, causal, cache, global_attention_mask,
                           output_attentions=output_attentions)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        padding_mask: torch.Tensor | None,
        causal: bool,
        cache: Any,
        global_attention_mask: torch.Tensor | None,
        global_attention: Callable[[torch.Tensor], torch.Tensor] | None = None,
        global_attention_weights: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The forward of every pattern: the context, and with ``output_attentions`` the sparse weights.

        ``global_attention(rows)`` gives the context of the global tokens at ``rows`` (batch, g,
        positions in the input's order), (batch, heads, g, head_dim), for a pattern whose global
        queries attend every real key in their own way (Longformer's projections), and
        ``global_attention_weights(rows)`` their weights (batch, heads, g, L) over the keys in the
        input's order. They are called only when there are global rows and the attention is
        bidirectional.
        """
        self.check_causal(causal)
        self.check_global_attention_mask(global_attention_mask, q, causal)
        if cache is not None:
            if output_attentions:
                raise ValueError(
                    f"output_attentions is not available while decoding with {type(self).__name__}; "
                    "call without a cache (past_key_values=None, use_cache=False) to get the weights."
                )
            return self._attend_with_cache(q, k, v, padding_mask, causal, cache)
        return self._attend_parallel(
            q, k, v, padding_mask, causal, global_attention_mask, global_attention,
            global_attention_weights if output_attentions else None, output_attentions,
        )

    def check_causal(self, causal: bool) -> None:
        """Refuse causal attention where the pattern is bidirectional only."""
        if causal and not self.supports_causal:
            raise ValueError(
                f"{type(self).__name__} is bidirectional only, got causal=True (config.is_decoder=True). "
                "Set is_decoder=False, or use a causal pattern (local, longformer, sparse, axial) for a causal LM."
            )

    @staticmethod
    def check_global_attention_mask(mask: torch.Tensor | None, q: torch.Tensor, causal: bool) -> None:
        if mask is None:
            return
        expected = (q.shape[0], q.shape[2])
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"global_attention_mask has shape {tuple(mask.shape)} but input_ids has {expected}: give one "
                "0/1 entry per token (1 for global attention, 0 for local), shaped like input_ids."
            )
        if causal and bool(mask.any()):
            raise ValueError(
                "global_attention_mask cannot be used with causal attention: a global token would see the "
                "future. Drop it (the first token is already an attention sink) or use a bidirectional model."
            )

    def _attend_parallel(
        self, q, k, v, padding_mask, causal, global_attention_mask, global_attention,
        global_attention_weights=None, output_attentions=False,
    ):
        batch_size, _, length, _ = q.shape
        if padding_mask is None:
            lengths = torch.full((batch_size,), length, dtype=torch.long, device=q.device)
        else:
            lengths = padding_mask.sum(-1)
        order = None  # a batch that is not right-padded is packed: real tokens first
        if padding_mask is not None and bool((padding_mask[:, 1:] & ~padding_mask[:, :-1]).any()):
            order = real_tokens_first_order(padding_mask)
            if global_attention_mask is not None:
                global_attention_mask = global_attention_mask.gather(1, order)

        padded_length = self.padded_length(length)
        global_mask = global_token_mask(
            lengths, padded_length, causal=causal, special_tokens=self.global_special_tokens,
            extra=(global_attention_mask, self.pattern_global_tokens(lengths, padded_length)),
        )

        def prepare(x: torch.Tensor) -> torch.Tensor:
            x = x if order is None else gather_positions(x, order)
            return x if padded_length == length else F.pad(x, (0, 0, 0, padded_length - length))

        global_tokens = GlobalTokens.from_mask(global_mask)
        global_context = global_rows = None
        if global_attention is not None and global_tokens is not None and not causal:
            global_rows = global_tokens.positions if order is None else order.gather(1, global_tokens.positions)
            global_context = global_attention(global_rows)
        groups = self.head_groups(padded_length, lengths, causal, q.shape[1])
        q, k, v = prepare(q), prepare(k), prepare(v)
        context = block_sparse_attention(
            q, k, v, groups,
            lengths=lengths,
            global_tokens=global_tokens,
            causal=causal,
            global_context=global_context,
            dropout_p=self.attention_dropout(q),
            dense=padded_length < self.dense_attention_below,
            flex=self._use_flex(padded_length, q, k, v),
        )
        context = context if padded_length == length else context[:, :, :length]
        if padding_mask is not None:
            real = torch.arange(length, device=q.device) < lengths[:, None]
            context = context.masked_fill(~real[:, None, :, None], 0.0)
            context = context if order is None else scatter_positions(context, order)
        if not output_attentions:
            return context
        global_weights = None
        if global_attention_weights is not None and global_rows is not None:
            global_weights = global_attention_weights(global_rows)
            if order is not None:  # keys in the packed order, as the engine's
                global_weights = global_weights.gather(-1, order[:, None, None, :].expand_as(global_weights))
            global_weights = F.pad(global_weights, (0, padded_length - length))
        indices, values = block_sparse_attention_weights(
            q, k, groups, lengths=lengths, global_tokens=global_tokens, causal=causal, global_weights=global_weights,
        )
        if order is not None:  # packed positions back to the input's
            indices = torch.stack([indices[0], indices[1], order[indices[0], indices[2]], order[indices[0], indices[3]]])
        weights = torch.sparse_coo_tensor(
            indices, values.to(q.dtype), (q.shape[0], q.shape[1], length, length), check_invariants=False
        )
        return context, weights.coalesce()

    def _use_flex(self, padded_length: int, *inputs: torch.Tensor) -> bool:
        """Inference (no gradient, no dropout) at a length from ``flex_attention_from``."""
        if self.flex_attention_from is None or padded_length < self.flex_attention_from:
            return False
        if self.training and self.dropout:
            return False
        return not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs))

    def _attend_with_cache(self, q, k, v, padding_mask, causal, cache):
        """Causal decoding: new queries against the cached keys, the pattern as a predicate."""
        if not causal:
            raise ValueError("A cache is only used for causal decoding; pass causal=True or no cache.")
        new = q.shape[2]
        past = cache.get_seq_length(self.layer_idx)
        total = past + new
        if padding_mask is None:
            real = torch.ones(q.shape[0], total, dtype=torch.bool, device=q.device)
        else:
            real = padding_mask
        first_real = real.to(torch.uint8).argmax(-1)
        sink_index = torch.where(real.any(-1) & (first_real >= past), first_real - past, -1)
        keys, values = cache.update(k, v, self.layer_idx, sink_index=sink_index)
        if past == 0:
            return self._attend_parallel(q, k, v, padding_mask, causal, None, None)

        has_sink = isinstance(cache.layers[self.layer_idx], SinkSlidingWindowLayer)
        window = keys.shape[2] - int(has_sink)
        position = real.long().cumsum(-1) - 1  # position among the real tokens
        key_position, key_real = position[:, total - window :], real[:, total - window :]
        if has_sink:
            sink_in_window = (key_real & (key_position == 0)).any(-1, keepdim=True)
            key_position = torch.cat([torch.zeros_like(key_position[:, :1]), key_position], dim=-1)
            key_real = torch.cat([real.any(-1, keepdim=True) & ~sink_in_window, key_real], dim=-1)
        query_position, query_real = position[:, past:, None], real[:, past:, None]
        key_position, key_real = key_position[:, None, :], key_real[:, None, :]
        is_sink = (key_position == 0) & self.global_special_tokens

        groups = self.head_groups(self.padded_length(total), real.sum(-1), causal, q.shape[1])
        contexts = []
        for group in groups:
            allowed = group.allowed(query_position[:, None], key_position[:, None]) | is_sink[:, None]
            allowed = allowed & key_real[:, None] & (key_position <= query_position)[:, None] & query_real[:, None]
            contexts.append(_attend_allowed_keys(q[:, group.heads], keys[:, group.heads], values[:, group.heads], allowed))
        return torch.cat(contexts, dim=1)


def _attend_allowed_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA of ``q`` on the keys ``allowed`` (batch, 1, queries, keys) lets it see; rows that see none get 0.

    When the queries of a step together need at most half of the keys (a strided or axial
    pattern decoding against a full cache: O(√L) of L), only those are gathered, so a step costs
    O(keys needed) in attention instead of O(cache); choosing them is a few integer passes.
    """
    needed = allowed.any(dim=-2)  # (batch, 1, keys)
    count = int(needed.sum(-1).max())
    if 2 * count <= k.shape[2]:
        index = torch.sort((~needed).to(torch.uint8), dim=-1, stable=True).indices[..., :count]
        k, v = gather_positions(k, index[:, 0]), gather_positions(v, index[:, 0])
        allowed = allowed.gather(-1, index[:, :, None, :].expand(-1, -1, allowed.shape[-2], -1))
    empty = ~allowed.any(-1, keepdim=True)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty)
    return context.masked_fill(empty, 0.0)
