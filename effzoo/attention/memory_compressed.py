"""Memory-compressed attention (Liu et al. 2018, *Generating Wikipedia by Summarizing Long Sequences*,
§4.2.1, arXiv:1801.10198): keys and values through a strided convolution, kernel = stride =
``compression_rate``, so that queries attend L / rate compressed keys.

The convolution has one (head_dim × head_dim × rate) kernel and a bias for keys and one for values,
shared by the heads (the paper convolves each head's keys and values with the same weights), and
starts as averaging: identity across channels, 1/rate over the window. It runs over the tokens it
compresses (the real ones, without the special tokens kept exact), packed by rank
(``pooling.pack_by_rank``): padding is in no window, and a window of m < rate tokens (a row's last)
is the convolution of those m, scaled by rate / m (the mean of its tokens, at the averaging start).

Causal (the paper's decoder, T-DMCA): the sequence is cut into the same windows; a query attends the
keys of its own window exactly, up to itself, the compressed keys of the earlier windows (complete,
so nothing after the query reaches it) and the first real token, exact. Decoding keeps every key and
value (``DynamicCache``) and computes a step's queries as the causal forward computes them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionMechanism
from .masking import zero_padded_queries
from .pooling import attend_compressed, compressible_tokens, pack_by_rank
from .special_keys import special_keys


def compress_windows(packed: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The strided convolution of packed tokens: (batch, heads, ⌈L / rate⌉, d) and which windows hold tokens.

    ``packed`` (batch, heads, L, d) holds each row's ``counts`` (batch,) tokens first; ``weight`` is
    (d_out, d_in, rate), as ``nn.Conv1d``'s. Window w is Σ_t weight[:, :, t] x_{w·rate+t} over its m real
    tokens, times rate / m, plus the bias: tokens past the count never enter."""
    batch, heads, length, dim = packed.shape
    windows = -(-length // rate)
    rank = torch.arange(windows * rate, device=packed.device)
    inside = (rank < counts[:, None]).view(batch, 1, windows, rate, 1)
    grouped = F.pad(packed, (0, 0, 0, windows * rate - length)).view(batch, heads, windows, rate, dim) * inside
    received = (counts[:, None] - torch.arange(windows, device=packed.device) * rate).clamp(0, rate)
    summed = torch.einsum("bhwti,oit->bhwo", grouped, weight.to(packed.dtype))
    scale = (rate / received.clamp(min=1).to(packed.dtype))[:, None, :, None]
    return summed * scale + bias.to(packed.dtype), received > 0


class MemoryCompressedAttention(AttentionMechanism):
    """Memory-compressed attention, bidirectional or causal (local window exact, earlier windows compressed).

    Config fields (``MemoryCompressedConfig``, which holds the defaults and checks): ``compression_rate``,
    ``global_special_tokens``. Parameters: ``key_weight``/``value_weight`` (head_dim, head_dim, rate) and
    ``key_bias``/``value_bias`` (head_dim,).
    """

    supports_causal = True
    no_attention_weights_reason = (
        "memory-compressed attention's queries attend compressed windows (mixtures of tokens), not tokens, "
        "so there are no per-token weights."
    )
    conversion_init = ("memory-compressed convolutions: averaging (identity across channels, 1/compression_rate "
                       "over each window, zero bias)")

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.rate = config.compression_rate
        self.global_special_tokens = config.global_special_tokens
        dim = config.head_dim
        self.key_weight = nn.Parameter(torch.empty(dim, dim, self.rate))
        self.key_bias = nn.Parameter(torch.empty(dim))
        self.value_weight = nn.Parameter(torch.empty(dim, dim, self.rate))
        self.value_bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Averaging kernels: weight[o, i, t] = [o = i] / rate, zero biases (the mean of each window)."""
        dim = self.key_weight.shape[0]
        eye = torch.eye(dim, device=self.key_weight.device, dtype=self.key_weight.dtype)
        for weight, bias in ((self.key_weight, self.key_bias), (self.value_weight, self.value_bias)):
            weight.copy_((eye / self.rate)[..., None].expand_as(weight))
            bias.zero_()

    def compress(self, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(packed keys, packed values, compressed keys, compressed values, windows that hold tokens)."""
        counts = keep.sum(-1)
        packed_k, packed_v = pack_by_rank(k, keep), pack_by_rank(v, keep)
        keys, windows = compress_windows(packed_k, counts, self.key_weight, self.key_bias, self.rate)
        values, _ = compress_windows(packed_v, counts, self.value_weight, self.value_bias, self.rate)
        return packed_k, packed_v, keys, values, windows

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
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        batch, _, length, _ = k.shape
        keep, special = compressible_tokens(padding_mask, batch, length, causal, self.global_special_tokens, k.device)
        if causal:
            return self._causal(q, k, v, keep, special, padding_mask)
        _, _, keys, values, windows = self.compress(k, v, keep)
        return attend_compressed(q, keys, values, windows, k, v, special, padding_mask, self.attention_dropout(q))

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, special: torch.Tensor,
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The decoder form for queries at the last ``q.shape[2]`` positions: own window exact up to the
        query, earlier windows compressed, the first real token exact; one softmax over the three.

        The scores against the compressed keys are (L × L / rate), the paper's cost."""
        batch, heads, new, dim = q.shape
        length, rate = k.shape[2], self.rate
        packed_k, packed_v, keys, values, _ = self.compress(k, v, keep)
        last = keep.long().cumsum(-1)[:, length - new:] - 1  # rank of the last compressed token up to each query
        window = torch.div(last, rate, rounding_mode="floor")  # -1: none yet
        offset = torch.arange(rate, device=q.device)
        local_rank = window.clamp(min=0)[..., None] * rate + offset  # (batch, new, rate)
        local_allowed = (window[..., None] >= 0) & (local_rank <= last[..., None])
        index = local_rank.clamp(max=length - 1).flatten(1)[:, None, :, None].expand(-1, heads, -1, dim)
        local_k = packed_k.gather(2, index).view(batch, heads, new, rate, dim)
        local_v = packed_v.gather(2, index).view(batch, heads, new, rate, dim)
        compressed_allowed = torch.arange(keys.shape[2], device=q.device) < window[..., None]  # earlier windows
        special_k, special_v, special_valid = special_keys(k, v, special)

        compute = torch.promote_types(q.dtype, torch.float32)
        query = q.to(compute) / math.sqrt(dim)
        scores = torch.cat([
            torch.einsum("bhqd,bhqtd->bhqt", query, local_k.to(compute)),
            query @ keys.to(compute).transpose(-1, -2),
            query @ special_k.to(compute).transpose(-1, -2),
        ], dim=-1)
        allowed = torch.cat([local_allowed, compressed_allowed,
                             special_valid[:, None, :].expand(-1, new, -1)], dim=-1)[:, None]
        empty = ~allowed.any(-1, keepdim=True)
        weights = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0).softmax(-1) * ~empty
        weights = F.dropout(weights, p=self.attention_dropout(q), training=self.training)
        local_w, compressed_w, special_w = weights.split([rate, keys.shape[2], 2], dim=-1)
        context = (torch.einsum("bhqt,bhqtd->bhqd", local_w, local_v.to(compute))
                   + compressed_w @ values.to(compute) + special_w @ special_v.to(compute))
        return zero_padded_queries(context.to(q.dtype), padding_mask)
