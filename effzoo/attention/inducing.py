"""Induced set attention (Lee et al. 2019, *Set Transformer*, arXiv:1810.00825, §3.2, eq. 9-10):
every token reaches the others through m learned latent points, O(L · m) instead of O(L²).

The paper's block is ISAB(X) = MAB(X, H) with H = MAB(I, X): the m inducing points I attend the
tokens, and the tokens attend the m results. Here, per head, with the layer's own projections:

1. A = softmax(I Kᵀ/√d) over the real tokens (m × L): each latent's soft choice of tokens.
2. Hₖ = A K and Hᵥ = A V: the pooled tokens H = A X seen through the layer's key and value
   projections. Because a projection is affine and every row of A sums to 1,
   (A X) W_k + b_k = A (X W_k + b_k) = A K (and likewise for V), so this is exactly the paper's
   second block applying the layer's K and V to H, computed from k and v alone; the first block's
   value projection is the identity (H stays in the space of the layer's input, where K and V
   apply) and its feed-forward and LayerNorms are left out, so that a converted BERT's projections
   keep their meaning.
3. output = softmax(Q [Hₖ; K_s]ᵀ/√d) [Hᵥ; V_s]: each query attends the m pooled tokens and, with
   ``global_special_tokens``, the exact keys and values of the first and last real token ([CLS]
   and the final [SEP] of a converted BERT), which step 1 then leaves out (``special_keys.py``).

The latents I (heads, m, head_dim) live in the query space. They start as standard normal draws
and conversion calibrates them on sample text (:meth:`InducingAttention.calibrate_on`): k-means
centroids of each head's real queries, so that each latent attends as a group of alike queries do and
its Hᵥ is close to what those queries' exact attention returns. Measured on all-MiniLM-L6-v2 (m = 64,
BBC News, sentence cosine with the teacher on held-out articles): query centroids 0.86, standard
normal latents 0.71, key centroids 0.66.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttentionMechanism
from .masking import key_padding_attn_mask, zero_padded_queries
from .special_keys import append_special_keys, special_token_mask

#: Lloyd iterations of the calibration's k-means.
KMEANS_ITERATIONS = 10


def kmeans_plus_plus(vectors: torch.Tensor, points: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding per head (Arthur & Vassilvitskii 2007): ``points`` of the (heads, n, d) vectors,
    each drawn with probability ∝ its squared distance to the nearest one drawn before (the first
    uniformly), so that the start spreads over the clusters and Lloyd's iterations do not merge two.
    """
    heads, count, _ = vectors.shape
    rows = torch.arange(heads, device=vectors.device)
    picks = torch.randint(count, (heads,), generator=generator).to(vectors.device)
    chosen = [vectors[rows, picks]]
    nearest = (vectors - chosen[0][:, None]).square().sum(-1)  # (heads, n) squared distances
    for _ in range(points - 1):
        weights = nearest.cpu().double() + torch.finfo(torch.float64).tiny  # all zero: uniform
        picks = torch.multinomial(weights, 1, generator=generator)[:, 0].to(vectors.device)
        chosen.append(vectors[rows, picks])
        nearest = torch.minimum(nearest, (vectors - chosen[-1][:, None]).square().sum(-1))
    return torch.stack(chosen, dim=1)


def kmeans(vectors: torch.Tensor, start: torch.Tensor, iterations: int) -> torch.Tensor:
    """Lloyd's k-means per head: ``vectors`` (heads, n, d), ``start`` (heads, m, d) -> centroids (heads, m, d).

    Each iteration assigns every vector to its nearest centroid (Euclidean) and moves each centroid to
    the mean of its vectors; a centroid that no vector chose stays where it is.
    """
    centroids = start.clone()
    for _ in range(iterations):
        nearest = torch.cdist(vectors, centroids).argmin(-1)  # (heads, n)
        index = nearest[..., None].expand_as(vectors)
        sums = torch.zeros_like(centroids).scatter_add_(1, index, vectors)
        counts = torch.zeros(centroids.shape[:2], dtype=vectors.dtype, device=vectors.device)
        counts.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=vectors.dtype))
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
    return centroids


class InducingAttention(AttentionMechanism):
    """Set Transformer's induced set attention with the layer's own projections (see the module docstring).

    Config fields (``InducingConfig``, which holds the defaults and checks): ``num_inducing_points``,
    ``global_special_tokens``. Parameter: ``latents`` (heads, num_inducing_points, head_dim).
    """

    supports_causal = False
    bidirectional_reason = 'every latent point reads the whole sequence, later tokens included'
    calibrates = True
    calibration_method = "the latents as k-means centroids of each head's real queries"
    conversion_init = ("inducing latents: k-means centroids of each head's real queries on sample text "
                       "(standard normal until calibrated)")
    no_attention_weights_reason = (
        "queries attend the pooled inducing points, not the tokens; inspect the latents' own weights "
        "softmax(I Kᵀ/√d) instead."
    )

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.global_special_tokens = config.global_special_tokens
        self.latents = nn.Parameter(torch.empty(config.num_attention_heads, config.num_inducing_points,
                                                config.head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard normal latents: queries of unit-variance entries, as projected BERT queries roughly are,
        so the latents start from distinct soft choices of tokens rather than all from the uniform mean."""
        nn.init.normal_(self.latents)

    def pooled_and_special(self, q: torch.Tensor, padding_mask: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, L) masks of the tokens the latents pool (real, not special) and of the special tokens."""
        batch, _, length, _ = q.shape
        real = torch.ones(batch, length, dtype=torch.bool, device=q.device) if padding_mask is None \
            else padding_mask.bool()
        if not self.global_special_tokens:
            return real, torch.zeros_like(real)
        special = special_token_mask(padding_mask, batch, length, False, q.device)
        return real & ~special, special

    @torch.no_grad()
    def calibrate_on(self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None) -> None:
        """Set the latents to k-means centroids of each head's pooled queries in one forward's inputs.

        Only the tokens the latents pool count (real, and not special when ``global_special_tokens``).
        A latent is a query of the first attention: placed at the centre of a cluster of queries, it
        pools the keys and values those queries attend (measured better than key centroids, see the
        module docstring; ``k`` is part of the calibration interface and unused). The centroids start
        from k-means++ seeding with a fixed generator (seed 0), so calibration is deterministic; with
        fewer queries than latents, the queries there are become the first latents and the others keep
        their values.
        """
        pooled, _ = self.pooled_and_special(q, padding_mask)
        queries = q.transpose(0, 1)[:, pooled].float()  # (heads, n, d)
        count, points = queries.shape[1], self.latents.shape[1]
        if not count:
            return
        if count < points:
            self.latents[:, :count] = queries.to(self.latents.dtype)
            return
        start = kmeans_plus_plus(queries, points, torch.Generator().manual_seed(0))
        self.latents.copy_(kmeans(queries, start, KMEANS_ITERATIONS))

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
        pooled, special = self.pooled_and_special(q, padding_mask)
        points_k, points_v = self.induce(k, v, pooled)
        has_points = pooled.any(-1, keepdim=True).expand(-1, points_k.shape[2])  # (batch, m)
        keys, values, key_mask = append_special_keys(points_k, points_v, has_points, k, v, special)
        context = F.scaled_dot_product_attention(q, keys, values, attn_mask=key_padding_attn_mask(key_mask),
                                                 dropout_p=self.attention_dropout(q))
        return zero_padded_queries(context, padding_mask)

    def induce(self, k: torch.Tensor, v: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hₖ = A K and Hᵥ = A V, A = softmax(I Kᵀ/√d) over the ``pooled`` keys: (batch, heads, m, d) each.

        Keys and values travel as one [K, V] value tensor of one SDPA call, so both are pooled with the
        same weights A (the step-2 identity of the module docstring).
        """
        latents = self.latents.to(k.dtype)[None].expand(k.shape[0], -1, -1, -1)
        both = F.scaled_dot_product_attention(latents, k, torch.cat([k, v], dim=-1),
                                              attn_mask=key_padding_attn_mask(pooled),
                                              dropout_p=self.attention_dropout(k))
        return both.split([k.shape[-1], v.shape[-1]], dim=-1)
