"""The special tokens as exact keys beside compressed ones (the compression family's sinks).

A converted BERT's heads put much of their weight on [CLS] and the final [SEP]. A mechanism that
compresses the keys (pools, projects or summarises them) blurs those two into their neighbours;
keeping their keys and values exact, appended to the compressed ones and left out of the
compression, restores most of what the heads relied on. Queries then attend
[compressed keys ; special keys] under one softmax.
"""

from __future__ import annotations

import torch


def special_token_mask(padding_mask: torch.Tensor | None, batch: int, length: int, causal: bool,
                       device: torch.device) -> torch.Tensor:
    """(batch, length) bool, True at the first real token of each row and (bidirectional) its last."""
    real = torch.ones(batch, length, dtype=torch.bool, device=device) if padding_mask is None else padding_mask.bool()
    positions = torch.arange(length, device=device)
    first = torch.where(real, positions, length).amin(-1)
    special = positions == first[:, None]
    if not causal:
        last = torch.where(real, positions, -1).amax(-1)
        special = special | (positions == last[:, None])
    return special & real


def special_keys(k: torch.Tensor, v: torch.Tensor, special: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The keys and values of the special tokens, (batch, heads, 2, d) each, and which of the two slots
    are real (batch, 2): a row with one real token has one special token, a row with none has none."""
    count = special.sum(-1)
    order = torch.sort((~special).to(torch.uint8), dim=-1, stable=True).indices[:, :2]  # special positions first
    valid = torch.arange(2, device=k.device) < count[:, None]
    index = order[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
    return k.gather(2, index), v.gather(2, index), valid


def append_special_keys(
    keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor | None,
    k: torch.Tensor, v: torch.Tensor, special: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[compressed ; special] keys and values (batch, heads, m + 2, d) and their (batch, m + 2) mask.

    ``keys``/``values`` are the m compressed rows (batch, heads, m, d) and ``key_mask`` (batch, m)
    says which of them hold real tokens (None: all); ``k``/``v`` are the layer's full keys and values
    and ``special`` the mask of :func:`special_token_mask`."""
    extra_k, extra_v, valid = special_keys(k, v, special)
    if key_mask is None:
        key_mask = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool, device=keys.device)
    return (torch.cat([keys, extra_k.to(keys.dtype)], dim=2), torch.cat([values, extra_v.to(values.dtype)], dim=2),
            torch.cat([key_mask, valid], dim=1))
