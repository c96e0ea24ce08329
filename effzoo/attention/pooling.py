"""Segment pooling of keys and values over the real tokens: the shared part of ``linformer`` and
``memory_compressed``.

Both variants compress the L keys and values along the sequence (Linformer's projection E, F, Wang
et al. 2020, eq. 7; memory-compressed attention's strided convolution, Liu et al. 2018, §4.2.1). To
make the result independent of padding, the compression never reads absolute positions: the tokens
it compresses (the real ones, without the special tokens that stay exact) are first packed to the
front of the sequence in their order, so that a token is addressed by its rank among them, and
each compressed row is renormalised over the tokens it actually received. Left and right padding
then give the same packed sequence, and so the same compressed keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import zero_padded_queries
from .special_keys import append_special_keys, special_token_mask


def compressible_tokens(padding_mask: torch.Tensor | None, batch: int, length: int, causal: bool,
                        global_special_tokens: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens to compress, special tokens kept exact), both (batch, length) bool.

    The special tokens (first and, bidirectionally, last real token) are left out of the
    compression when ``global_special_tokens``; otherwise none is special."""
    real = torch.ones(batch, length, dtype=torch.bool, device=device) if padding_mask is None else padding_mask.bool()
    special = special_token_mask(padding_mask, batch, length, causal, device)
    if not global_special_tokens:
        special = torch.zeros_like(special)
    return real & ~special, special


def pack_by_rank(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, heads, L, d) with the kept positions first, in their order, then the others.

    Position r of the result is the token of rank r among the kept ones of its row (a stable sort
    of the mask), so left and right padding pack to the same sequence."""
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices
    return x.gather(2, order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))


def segment_mean_matrix(segments: int, length: int) -> torch.Tensor:
    """(segments, length) float32: row i averages segment i = {p : ⌊p · segments / length⌋ = i} of the
    positions (contiguous, of ⌊length/segments⌋ or ⌈length/segments⌉ positions; empty rows where
    segments > length)."""
    segment = torch.arange(length) * segments // length
    member = (segment[None, :] == torch.arange(segments)[:, None]).float()
    return member / member.sum(-1, keepdim=True).clamp(min=1)


def attend_compressed(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor,
    k: torch.Tensor, v: torch.Tensor, special: torch.Tensor, padding_mask: torch.Tensor | None, dropout_p: float,
) -> torch.Tensor:
    """Bidirectional attention of every query over [compressed keys ; exact special keys].

    ``keys``/``values`` (batch, heads, m, d) are the compressed rows and ``key_mask`` (batch, m) says
    which hold tokens; one SDPA call under a (batch, 1, 1, m + 2) key mask, so no (L × m) tensor is
    stored. Padded queries, and every query of a row without a real token, get zeros."""
    keys, values, mask = append_special_keys(keys, values, key_mask, k, v, special)
    visible = mask | ~mask.any(-1, keepdim=True)  # an empty row stays finite; its queries are zeroed below
    context = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype),
                                             attn_mask=visible[:, None, None, :], dropout_p=dropout_p)
    context = context * mask.any(-1)[:, None, None, None]
    return zero_padded_queries(context, padding_mask)
