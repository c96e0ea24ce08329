"""Nyström attention (Xiong et al. 2021, *Nyströmformer: A Nyström-Based Algorithm for Approximating
Self-Attention*, AAAI, arXiv:2102.03902): the softmax matrix through m landmarks, O(L · m) memory.

Landmarks are segment means (the paper's §3.3): each sequence's real tokens, in order, are cut into
m contiguous segments as even as possible (sizes ⌊n/m⌋ or ⌈n/m⌉ for n real tokens; segments are
taken by rank among the real tokens, so left and right padding give the same landmarks and padding
never becomes one), and q̃_s, k̃_s are the means of a segment's queries and keys. With the segment
sizes c_s (P the L × m segment indicator, A = softmax(QKᵀ/√d)) the paper's eq. 14 is

    A ≈ C · pinv(W) · R,   C = A·P ≈ kernel1 = softmax(Q K̃ᵀ/√d + log c),
                           W = R·P ≈ kernel2 = softmax(Q̃ K̃ᵀ/√d + log c),
                           R       = kernel3 = softmax(Q̃ Kᵀ/√d)  (padded keys masked):

a segment's summed columns, exp(q·k_j) summed over its c_s keys, are estimated by c_s · exp(q·k̃_s).
The log c bias is a constant when the segments have one size (always the case Transformers'
Nyströmformer accepts: a length divisible by the landmarks), where these are the paper's kernels
exactly. pinv(kernel2) is the paper's iterative Moore–Penrose approximation (eq. 16), and the output
is computed right to left, kernel1 · (pinv(kernel2) · (kernel3 · V)): two fused
``scaled_dot_product_attention`` calls (queries on the landmarks with the m "landmark values"
X = pinv(kernel2) · kernel3 · V, and the landmarks on the keys) and m × m products between.

Exact limit: a sequence with at most m real tokens makes every token its own landmark (c = 1), so
kernel2 = kernel3 is that sequence's square softmax matrix and pinv(kernel2) · kernel3 · V = V;
such a sequence takes X = V directly (the identity, not the iteration, which needs many more than
6 steps on the near-singular softmax matrices of short inputs), so its output is exact attention.

Special tokens (``global_special_tokens``): the first and last real token (S, see
``special_keys.py``) stay exact keys and out of the landmarks, which are then taken over the other
real tokens N. Exact attention splits as

    out_i = (Σ_{j∈S} e^{s_ij} v_j + Z_i · o_i) / (Σ_{j∈S} e^{s_ij} + Z_i),

o_i the softmax attention over N and Z_i = Σ_{j∈N} e^{s_ij} its normaliser. Nyström gives
o_i ≈ kernel1_i · X, and the same segment estimate gives Z_i ≈ Σ_s c_s e^{q_i·k̃_s/√d}, the
normaliser of kernel1. So the output is one softmax over [landmarks with bias log c ; special
keys] with values [X ; V_S]: one ``scaled_dot_product_attention``, exact in the limit (every token
of N its own landmark, X = V_N: attention over N ∪ S, all the real keys).

Optional skip (``conv_kernel_size``, the paper's and Transformers' depthwise convolution): each
head's values convolved along the sequence (one kernel per head, shared by its dimensions) are
added to the output; padded values are zeroed first, so with padding on either side it is the
convolution of the real tokens alone (zeros beyond them), padding invariant too.

Attention-probability dropout has no place in the factorisation (Transformers' Nyströmformer
defines it and never applies it): ``attention_probs_dropout_prob`` is accepted and not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionMechanism
from .masking import gather_positions, key_padding_attn_mask, real_tokens_first_order, zero_padded_queries
from .special_keys import append_special_keys, special_token_mask


@dataclass
class Segments:
    """Each row's landmark segments: token positions (batch, m, width), whether each slot holds a
    token of the segment (batch, m, width), and the segment sizes c (batch, m), 0 for no landmark."""

    index: torch.Tensor
    taken: torch.Tensor
    sizes: torch.Tensor


def landmark_segments(members: torch.Tensor, num_landmarks: int) -> Segments:
    """Cut each row's member tokens (``members`` (batch, L) bool), in order, into min(m, n) contiguous
    segments of sizes ⌊n/m⌋ or ⌈n/m⌉: segment s holds ranks ⌊s·n/c⌋ to ⌊(s+1)·n/c⌋ − 1 of the n members,
    c = min(m, n) (one token per segment when n ≤ m). Ranks, not positions: padding never moves a segment."""
    batch, length = members.shape
    count = members.sum(-1, keepdim=True)  # (batch, 1)
    landmarks = count.clamp(max=num_landmarks)
    s = torch.arange(num_landmarks, device=members.device)
    start = torch.div(s * count, landmarks.clamp_min(1), rounding_mode="floor")
    end = torch.div((s + 1) * count, landmarks.clamp_min(1), rounding_mode="floor")
    sizes = torch.where(s < landmarks, end - start, 0)
    width = max(1, -(-length // num_landmarks))  # the largest segment of a full row: no device sync
    rank = start[..., None] + torch.arange(width, device=members.device)  # (batch, m, width)
    order = real_tokens_first_order(members)  # members first, in order: position of each rank
    index = order.gather(1, rank.clamp(max=length - 1).flatten(1)).view(batch, num_landmarks, width)
    return Segments(index, rank < (start + sizes)[..., None], sizes)


def segment_means(x: torch.Tensor, segments: Segments) -> torch.Tensor:
    """(batch, heads, L, d) -> (batch, heads, m, d): the mean of each segment's rows (0 for no landmark).

    The tokens are picked as rows of all heads at once (one ``index_select`` of (batch·L, heads·d) rows,
    no copy when the heads were split from a (batch, L, hidden) projection, as the backbone's are) and
    averaged by one batched product with each segment's weights 1/c: several times faster on CPU than a
    ``gather`` along the length."""
    batch, heads, length, dim = x.shape
    _, m, width = segments.index.shape
    rows = x.transpose(1, 2).reshape(batch * length, heads * dim)
    flat = segments.index + torch.arange(batch, device=x.device)[:, None, None] * length
    picked = rows.index_select(0, flat.flatten()).view(batch * m, width, heads * dim)
    weights = segments.taken.to(x.dtype) / segments.sizes.clamp_min(1)[..., None].to(x.dtype)
    weights = weights.view(batch * m, 1, width)
    return torch.bmm(weights, picked).view(batch, m, heads, dim).transpose(1, 2)


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """The Moore–Penrose pseudo-inverse of each (…, m, m) matrix by the paper's iteration (eq. 16,
    after Razavi et al. 2014): Z₀ = Aᵀ / (‖A‖₁ ‖A‖∞), Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ))).

    The norms are each matrix's own (Transformers' Nyströmformer takes the largest column sum over the
    whole batch, which ties a sequence's result to the others'). Converges for any A; how fast depends
    on its conditioning."""
    identity = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(-2).amax(-1)  # largest column sum
    norm_inf = a.abs().sum(-1).amax(-1)  # largest row sum (1 for a softmax)
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * identity - az @ (15 * identity - az @ (7 * identity - az)))
    return z


def visible_somewhere(bias: torch.Tensor) -> torch.Tensor:
    """An additive mask (batch, keys) whose rows with no finite entry see every key instead, so that
    their (discarded) softmax stays finite in the forward and the backward."""
    return torch.where(torch.isinf(bias).all(-1, keepdim=True), torch.zeros_like(bias), bias)


class NystromAttention(AttentionMechanism):
    """Nyström-approximated softmax attention through segment-mean landmarks; bidirectional only.

    Config (``NystromConfig``, which holds the defaults and checks): ``num_landmarks``,
    ``pinv_iterations``, ``conv_kernel_size``, ``global_special_tokens``. Parameters: ``conv``, the
    depthwise convolution over the values (heads → heads, kernel (conv_kernel_size, 1), no bias, as
    Transformers' Nyströmformer's), only when ``conv_kernel_size`` is set.
    """

    supports_causal = False
    bidirectional_reason = 'a landmark averages earlier and later tokens'
    conversion_init = ("nystrom: no parameters of its own; with conv_kernel_size, the convolution over the "
                       "values starts at zero (the converted model starts as Nyström attention of the source)")
    no_attention_weights_reason = (
        "Nyström attention never forms the L×L weights: they are the product kernel1 · pinv(kernel2) · kernel3 "
        "through the landmarks."
    )

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.num_landmarks = config.num_landmarks
        self.pinv_iterations = config.pinv_iterations
        self.global_special_tokens = config.global_special_tokens
        self.initializer_range = config.initializer_range
        self.conv = None
        if config.conv_kernel_size is not None:
            heads, size = config.num_attention_heads, config.conv_kernel_size
            self.conv = nn.Conv2d(heads, heads, kernel_size=(size, 1), padding=(size // 2, 0), bias=False, groups=heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The convolution, if any, normal(0, initializer_range), as Transformers initialises a Conv2d."""
        if self.conv is not None:
            nn.init.normal_(self.conv.weight, mean=0.0, std=self.initializer_range)

    @torch.no_grad()
    def init_from_projections(self, query: nn.Linear, key: nn.Linear, value: nn.Linear) -> None:
        """At conversion, the convolution starts at zero: the converted BERT has no such skip, so its
        attention starts as the Nyström approximation of the source's."""
        if self.conv is not None:
            self.conv.weight.zero_()

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
        if cache is not None:
            raise ValueError("cache: Nyström attention does not decode incrementally; call with cache=None.")
        batch, _, length, _ = q.shape
        real = torch.ones(batch, length, dtype=torch.bool, device=q.device) if padding_mask is None \
            else padding_mask.bool()
        special = special_token_mask(real, batch, length, False, q.device) if self.global_special_tokens \
            else torch.zeros_like(real)
        members = real & ~special  # the tokens the landmarks summarise
        segments = landmark_segments(members, self.num_landmarks)
        compute = torch.promote_types(q.dtype, torch.float32)  # the m × m algebra in float32 at least
        q_landmarks, k_landmarks = segment_means(q.to(compute), segments), segment_means(k.to(compute), segments)
        log_sizes = segments.sizes.to(compute).log()  # −inf where there is no landmark
        values = self.landmark_values(q_landmarks, k_landmarks, log_sizes, k, v, members, segments)

        keys, values, key_mask = k_landmarks.to(k.dtype), values.to(v.dtype), segments.sizes > 0
        bias = log_sizes
        if self.global_special_tokens:
            keys, values, key_mask = append_special_keys(keys, values, key_mask, k, v, special)
            bias = torch.cat([log_sizes, log_sizes.new_zeros(batch, key_mask.shape[1] - log_sizes.shape[1])], dim=1)
        bias = visible_somewhere(bias.masked_fill(~key_mask, float("-inf")))
        context = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias[:, None, None, :].to(q.dtype))
        if self.conv is not None:
            context = context + self.convolved_values(v, padding_mask)
        return zero_padded_queries(context, padding_mask)

    def landmark_values(
        self, q_landmarks: torch.Tensor, k_landmarks: torch.Tensor, log_sizes: torch.Tensor,
        k: torch.Tensor, v: torch.Tensor, members: torch.Tensor, segments: Segments,
    ) -> torch.Tensor:
        """X = pinv(kernel2) · (kernel3 · V), (batch, heads, m, d), what the queries read from the landmarks;
        X = the members' own values in a sequence whose every member is a landmark (the exact limit)."""
        if members.shape[1] <= self.num_landmarks:  # every sequence is in the exact limit
            return self.own_values(v, segments, q_landmarks.dtype)
        scale = 1.0 / math.sqrt(q_landmarks.shape[-1])
        kernel_2 = torch.softmax(q_landmarks @ k_landmarks.transpose(-1, -2) * scale
                                 + visible_somewhere(log_sizes)[:, None, None, :], dim=-1)
        kernel_3_v = F.scaled_dot_product_attention(q_landmarks.to(k.dtype), k, v,
                                                    attn_mask=key_padding_attn_mask(members))
        nystrom = iterative_pinv(kernel_2, self.pinv_iterations) @ kernel_3_v.to(kernel_2.dtype)
        exact = members.sum(-1) <= self.num_landmarks
        if not exact.any():  # a host sync, which spares long batches the gather (and its backward's zeros)
            return nystrom
        return torch.where(exact[:, None, None, None], self.own_values(v, segments, nystrom.dtype), nystrom)

    @staticmethod
    def own_values(v: torch.Tensor, segments: Segments, dtype: torch.dtype) -> torch.Tensor:
        """(batch, heads, m, d): the value of each segment's first token, X of a sequence in the exact limit
        (where every segment is one token)."""
        return gather_positions(v, segments.index[:, :, 0]).to(dtype)

    def convolved_values(self, v: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The depthwise convolution of each head's values along the sequence, padded values zeroed: with
        the padding on either side, a convolution over the real tokens alone (zeros beyond them)."""
        if padding_mask is not None:
            v = v.masked_fill(~padding_mask.bool()[:, None, :, None], 0.0)
        return self.conv(v)
