"""Routing attention (Roy et al. 2021, *Efficient Content-Based Sparse Attention with Routing
Transformers*, arXiv:2003.05997): queries and keys routed to learned clusters by online k-means.

Each routing head has ``num_clusters`` unit centroids μ_c. Queries and keys are L2-normalised
for routing (spherical k-means), and every cluster takes the ``cluster_window`` real queries
and the ``cluster_window`` real keys nearest to it (largest cosine): the paper's balanced
assignment, which gives every cluster the same size, so all clusters are one batched
(batch, heads, clusters, window, window) score tensor, O(L · window) memory, never L × L. Query i
attends key j iff some cluster took both (and with ``causal``, j ≤ i; with shared queries and keys
a token attends its own key only when nothing else is there, as Reformer's shared-QK attention).

Softmax runs over that union exactly: each cluster's (context, log-sum-exp) pair is combined
through the log-sum-exps, and every score of a pair is lowered by log(the number of clusters that
took both), so a key that a query meets in several clusters counts once (as LSH's rounds,
``lsh.py``). A real query that meets no key (no cluster took it, or causality leaves its clusters
empty) attends its own position; padded tokens are never taken while a row has real tokens to
give, and their rows are zeros.

The centroids are a buffer, drawn from ``routing_seed`` (random, unit norm) until conversion
calibrates them (:meth:`RoutingAttention.calibrate`). In training they follow the data by an
exponential moving average: each real query and key is assigned to its nearest centroid,
and μ_c ← normalise(λ μ_c + (1 − λ) normalise(mean of its vectors)), λ = ``centroid_decay``;
a centroid that no token chose keeps its place. Under ``torch.distributed`` the sums and counts
are all-reduced first, so every rank holds the same centroids (DDP's buffer broadcast then
changes nothing). A step's update is applied when the next training forward starts (or the
mechanism leaves training): recomputations inside the backward pass (gradient checkpointing,
reversible layers) then see the clusters the forward saw, and gather nothing.

Beside the routing heads, the first ``num_local_heads`` heads run the ``local`` variant's blocked
local attention (``local.py``), as the paper mixes local and routing heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from .base import AttentionMechanism
from .local import LocalAttention
from .lsh import shared_qk_keys


@dataclass
class Clusters:
    """The tokens every cluster took in one forward: positions (batch, heads, clusters, window),
    sorted nearest first, and whether each slot holds a taken token (False past the row's window)."""

    query_index: torch.Tensor
    key_index: torch.Tensor
    query_taken: torch.Tensor
    key_taken: torch.Tensor


def cluster_windows(real: torch.Tensor, num_clusters: int, cluster_window: int | None) -> torch.Tensor:
    """Tokens each cluster takes in each row (batch,): ``cluster_window`` or ⌈real tokens / clusters⌉,
    at most the row's real tokens."""
    count = real.sum(-1)
    window = torch.div(count + num_clusters - 1, num_clusters, rounding_mode="floor") if cluster_window is None \
        else torch.full_like(count, cluster_window)
    return torch.minimum(window, count)


def nearest_tokens(vectors: torch.Tensor, centroids: torch.Tensor, real: torch.Tensor,
                   windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each centroid's nearest real tokens: positions (batch, heads, clusters, window) and whether taken.

    ``vectors`` (batch, heads, L, d) and ``centroids`` (heads, clusters, d) are unit vectors; padded
    tokens score −inf, so they come last and fall outside every row's window.
    """
    cosine = torch.einsum("bhld,hcd->bhcl", vectors, centroids).masked_fill(~real[:, None, None, :], float("-inf"))
    width = max(1, int(windows.max()))
    index = cosine.topk(width, dim=-1, sorted=True).indices
    taken = torch.arange(width, device=index.device) < windows[:, None, None, None]
    return index, taken


def gather_slots(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(batch, heads, L, d) read at (batch, heads, clusters, window) positions: (batch, heads, clusters, window, d)."""
    flat = index.flatten(2)
    return x.gather(2, flat[..., None].expand(-1, -1, -1, x.shape[-1])).unflatten(2, index.shape[2:])


def memberships(index: torch.Tensor, taken: torch.Tensor, length: int) -> torch.Tensor:
    """(batch, heads, L, clusters) float, 1 where the cluster took the token."""
    batch, heads, clusters, _ = index.shape
    member = torch.zeros(batch, heads, clusters, length, device=index.device)
    return member.scatter_(-1, index, taken.expand_as(index).float()).transpose(-1, -2)


def combine_clusters(contexts: torch.Tensor, log_normalisers: torch.Tensor, query_index: torch.Tensor,
                     v: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Σ over a query's clusters of exp(lse_c − logsumexp lse) · context_c, at every position.

    ``contexts`` (batch, heads, clusters, window, d) and ``log_normalisers`` (…, window), −inf for a slot
    that met no key; a real query with no finite slot takes its own value; padded rows are zeros.
    """
    batch, heads, length, dim = v.shape
    index = query_index.flatten(2)
    lse = log_normalisers.flatten(2)
    peak = lse.new_full((batch, heads, length), float("-inf"))
    peak = peak.scatter_reduce(-1, index, lse.detach(), reduce="amax")  # a stabiliser only: it cancels
    met = torch.isfinite(peak)
    weight = torch.exp(lse - peak.masked_fill(~met, 0.0).gather(-1, index))
    total = torch.zeros_like(peak).scatter_add(-1, index, weight)
    share = weight / torch.where(met, total, 1.0).gather(-1, index)
    context = share.new_zeros(batch, heads, length, dim).scatter_add(
        2, index[..., None].expand(-1, -1, -1, dim), share[..., None] * contexts.flatten(2, 3).to(share.dtype))
    alone = ~met & real[:, None, :]
    context = torch.where(alone[..., None], v.to(context.dtype), context)
    return (context * real[:, None, :, None]).to(v.dtype)


def _inside_backward() -> bool:
    """Whether autograd's engine is running this forward: a recomputation (gradient checkpointing,
    reversible layers). ``torch.utils.checkpoint`` tells its own recomputations apart the same way."""
    return torch._C._current_graph_task_id() != -1


class RoutingAttention(AttentionMechanism):
    """The Routing Transformer's attention: balanced online k-means routing heads beside local heads.

    Config fields (``RoutingConfig``, which holds the defaults and checks): ``num_clusters``,
    ``cluster_window``, ``num_local_heads``, ``local_window``, ``centroid_decay``, ``routing_seed``,
    ``shared_qk``. Buffer: ``centroids`` (routing heads, clusters, head_dim), unit rows.
    """

    supports_causal = True
    calibrates = True
    calibration_method = "spherical k-means of the routing centroids over the routing heads' real queries and keys"
    no_attention_weights_reason = (
        "routing attention's weights are spread over its clusters and are not assembled into one tensor."
    )
    conversion_init = "routing centroids: drawn from routing_seed (random, unit norm) until calibrated"

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.num_clusters = config.cluster_count()
        self.cluster_window = config.cluster_window
        self.num_local_heads = config.local_head_count()
        self.centroid_decay = config.centroid_decay
        self.routing_seed = config.routing_seed
        self.shared_qk = config.uses_shared_qk()
        slots = self.cache_slots(config)
        self.routing_slot = layer_idx * len(slots)
        self.local = None
        if self.num_local_heads:
            self.local = LocalAttention(config.local_attention_config(), layer_idx * len(slots) + len(slots) - 1)
        self.register_buffer("centroids", torch.empty(config.routing_head_count, self.num_clusters, config.head_dim))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_parameters()

    # -- centroids ---------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Draw the centroids from ``routing_seed``: normal vectors, normalised (on the CPU, so every
        device gets the same)."""
        generator = torch.Generator().manual_seed(self.routing_seed)
        drawn = torch.randn(self.centroids.shape, generator=generator)
        self.centroids.copy_(F.normalize(drawn, dim=-1).to(self.centroids.device))
        self._pending = None

    @torch.no_grad()
    def calibrate(self, queries: torch.Tensor, keys: torch.Tensor | None = None, iterations: int = 10) -> None:
        """Set the centroids by spherical k-means over sample queries and keys of the routing heads.

        ``queries`` and ``keys`` are (routing heads, n, head_dim) (``keys`` None: the queries alone, as
        with shared QK); they are normalised here. The centroids start from ``num_clusters`` of the
        vectors drawn with ``routing_seed`` (from the current centroids where there are fewer vectors
        than clusters); each iteration assigns every vector to its nearest centroid and moves the
        centroid to the normalised sum of its vectors (a centroid that no vector chose stays).
        """
        expected = tuple(self.centroids.shape[::2])
        for name, x in (("queries", queries), ("keys", keys)):
            if x is not None and (x.dim() != 3 or (x.shape[0], x.shape[2]) != expected or x.shape[1] < 1):
                raise ValueError(f"calibrate: {name} must be (routing heads, n, head_dim) = ({expected[0]}, n ≥ 1, "
                                 f"{expected[1]}), got {tuple(x.shape)}.")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"calibrate: iterations must be a positive integer, got {iterations!r}.")
        vectors = queries if keys is None else torch.cat([queries, keys], dim=1)
        vectors = F.normalize(vectors.float(), dim=-1).to(self.centroids.device)
        centroids = self.centroids.float().clone()
        if vectors.shape[1] >= self.num_clusters:
            generator = torch.Generator().manual_seed(self.routing_seed)
            picks = torch.randperm(vectors.shape[1], generator=generator)[: self.num_clusters].to(vectors.device)
            centroids = vectors[:, picks].clone()
        for _ in range(iterations):
            sums, counts = self._cluster_sums(vectors[None], centroids, torch.ones(vectors.shape[:2], dtype=torch.bool,
                                                                                  device=vectors.device)[None])
            centroids = torch.where(counts[..., None] > 0, F.normalize(sums, dim=-1), centroids)
        self.centroids.copy_(centroids)
        self._pending = None

    @torch.no_grad()
    def calibrate_on(self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None) -> None:
        """:meth:`calibrate` from one forward's inputs (batch, heads, L, d): the routing heads' real tokens."""
        if not self.centroids.shape[0]:
            return  # local heads only
        real = self._real(q, padding_mask)
        local = self.num_local_heads

        def real_tokens(x: torch.Tensor) -> torch.Tensor:
            return x[:, local:].transpose(0, 1)[:, real]  # (routing heads, real tokens, d)

        self.calibrate(real_tokens(q), None if self.shared_qk else real_tokens(k))

    @staticmethod
    def _cluster_sums(vectors: torch.Tensor, centroids: torch.Tensor,
                      real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums (heads, clusters, d) and counts (heads, clusters) of the real (batch, heads, n, d) unit
        vectors assigned to their nearest centroid; ``real`` is (batch, heads or 1, n)."""
        batch, heads, count, dim = vectors.shape
        nearest = torch.einsum("bhnd,hcd->bhnc", vectors, centroids).argmax(-1)
        weight = real.expand(batch, heads, count).float()
        index = nearest.transpose(0, 1).reshape(heads, -1)
        flat = (vectors * weight[..., None]).transpose(0, 1).reshape(heads, -1, dim)
        sums = centroids.new_zeros(centroids.shape).scatter_add_(1, index[..., None].expand(-1, -1, dim), flat)
        counts = centroids.new_zeros(centroids.shape[:2]).scatter_add_(1, index, weight.transpose(0, 1).reshape(heads, -1))
        return sums, counts

    @torch.no_grad()
    def _gather_statistics(self, q: torch.Tensor, k: torch.Tensor, real: torch.Tensor) -> None:
        """Keep this forward's k-means sums and counts (all-reduced across ranks) for the next update."""
        vectors = q if self.shared_qk else torch.cat([q, k], dim=2)
        vectors = F.normalize(vectors.float(), dim=-1)
        mask = real if self.shared_qk else torch.cat([real, real], dim=1)
        sums, counts = self._cluster_sums(vectors, self.centroids.float(), mask[:, None, :])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self._pending = (sums, counts)

    @torch.no_grad()
    def update_centroids(self) -> None:
        """Apply the kept statistics: μ_c ← normalise(λ μ_c + (1 − λ) normalise(Σ vectors of c)), where c was chosen."""
        if self._pending is None:
            return
        sums, counts = self._pending
        self._pending = None
        current = self.centroids.float()
        moved = F.normalize(self.centroid_decay * current + (1 - self.centroid_decay) * F.normalize(sums, dim=-1),
                            dim=-1)
        self.centroids.copy_(torch.where(counts[..., None] > 0, moved, current))

    def train(self, mode: bool = True) -> RoutingAttention:
        """Leaving training applies the last step's update, so that evaluation sees the trained centroids."""
        if not mode:
            self.update_centroids()
        return super().train(mode)

    # -- caches ------------------------------------------------------------------------------------

    @staticmethod
    def cache_slots(config: Any) -> list[str]:
        """The cache layers one model layer uses, in order: "routing" (every key) and "local" (a window)."""
        return [name for name, heads in (("routing", config.routing_head_count), ("local", config.local_head_count()))
                if heads]

    @classmethod
    def new_cache(cls, config: Any) -> Cache:
        """Per model layer, a cache layer of every key for the routing heads and the ``local`` variant's
        sliding window (with its sink slot) for the local heads."""
        local_layers = LocalAttention.new_cache(config.local_attention_config()).layers
        layers = []
        for layer in range(config.num_hidden_layers):
            for slot in cls.cache_slots(config):
                layers.append(DynamicLayer() if slot == "routing" else local_layers[layer])
        return Cache(layers=layers)

    # -- forward -----------------------------------------------------------------------------------

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
        if causal and not self.shared_qk and self.centroids.shape[0]:
            raise ValueError("RoutingAttention with shared_qk=False cannot be causal: causal routing needs shared "
                             "queries and keys. Set shared_qk=True in the config (or None, which follows is_decoder).")
        local = self.num_local_heads
        contexts = []
        if self.local is not None:
            contexts.append(self.local(q[:, :local], k[:, :local], v[:, :local], padding_mask=padding_mask,
                                       causal=causal, cache=cache))
        if self.centroids.shape[0]:
            contexts.append(self._route(q[:, local:], k[:, local:], v[:, local:], padding_mask, causal, cache))
        return contexts[0] if len(contexts) == 1 else torch.cat(contexts, dim=1)

    def clusters(self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None = None) -> Clusters:
        """The tokens each cluster takes from routing-head queries and keys (batch, routing heads, L, d)
        (the keys are the queries' with ``shared_qk``), under the current centroids."""
        real = self._real(q, padding_mask)
        centroids = self.centroids.float()
        windows = cluster_windows(real, self.num_clusters, self.cluster_window)
        query_index, query_taken = nearest_tokens(F.normalize(q.float(), dim=-1), centroids, real, windows)
        if self.shared_qk:
            return Clusters(query_index, query_index, query_taken, query_taken)
        key_index, key_taken = nearest_tokens(F.normalize(k.float(), dim=-1), centroids, real, windows)
        return Clusters(query_index, key_index, query_taken, key_taken)

    @staticmethod
    def _real(q: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            return padding_mask.bool()
        return torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)

    def _route(self, q, k, v, padding_mask: torch.Tensor | None, causal: bool, cache: Any) -> torch.Tensor:
        if self.shared_qk:
            k = shared_qk_keys(q)
        if cache is not None:
            k, v = cache.update(k, v, self.routing_slot)
        if q.shape[-2] != k.shape[-2]:
            return self._attend_cached_keys(q, k, v, padding_mask, causal)
        real = self._real(q, padding_mask)
        if self.training and not _inside_backward():
            self.update_centroids()
        clusters = self.clusters(q, k, padding_mask)
        if self.training and not _inside_backward():
            self._gather_statistics(q, k, real)
        contexts, log_normalisers = self._attend_clusters(q, k, v, clusters, causal)
        return combine_clusters(contexts, log_normalisers, clusters.query_index, v, real)

    def _attend_clusters(self, q, k, v, clusters: Clusters, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cluster's context and log-normaliser per taken query: (batch, heads, clusters, window, d) and
        (…, window), −inf where a slot met no key."""
        compute = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least
        queries = gather_slots(q, clusters.query_index).to(compute)
        keys = gather_slots(k, clusters.key_index).to(compute)
        values = gather_slots(v, clusters.key_index)
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        row, col = clusters.query_index[..., :, None], clusters.key_index[..., None, :]
        allowed = clusters.query_taken[..., :, None] & clusters.key_taken[..., None, :]
        if causal:
            allowed = allowed & (col <= row)
        if self.shared_qk:
            allowed = allowed & (col != row)
        met = allowed.any(dim=-1)
        # Rows that meet no key keep finite scores, so that no gradient is NaN.
        scores = scores.masked_fill(~(allowed | ~met[..., None]), float("-inf"))
        if self.num_clusters > 1:
            scores = scores - self._meetings(clusters, q.shape[2]).to(compute).log_()
        log_normaliser = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - log_normaliser[..., None]).masked_fill(~met[..., None], 0.0)
        log_normaliser = log_normaliser.masked_fill(~met, float("-inf"))
        if self.training:
            weights = F.dropout(weights, p=self.attention_dropout(q))
        return weights.to(values.dtype) @ values, log_normaliser

    @staticmethod
    def _meetings(clusters: Clusters, length: int) -> torch.Tensor:
        """How many clusters took both the query and the key of each slot pair (≥ 1): a (window × clusters)
        by (clusters × window) product of memberships per cluster."""
        query_member = memberships(clusters.query_index, clusters.query_taken, length)
        key_member = memberships(clusters.key_index, clusters.key_taken, length)
        rows = gather_slots(query_member, clusters.query_index)
        cols = gather_slots(key_member, clusters.key_index)
        return (rows @ cols.transpose(-1, -2)).clamp_(min=1)

    def _attend_cached_keys(self, q, k, v, padding_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Decoding: each new query attends the keys that its nearest centroid takes among the cached ones.

        The parallel forward's clusters depend on tokens not yet generated, so a step cannot rebuild
        them; it applies the same rule to what is there: the query's nearest centroid takes its
        ``cluster_window`` (or ⌈tokens / clusters⌉) nearest real keys, and the query attends those at or
        before it. That is O(window) attention per token, and the parallel pattern whenever one cluster's
        window covers the sequence.
        """
        batch, heads, new, dim = q.shape
        total = k.shape[2]
        real = self._real(k, padding_mask)
        centroids = self.centroids.float()
        query_vectors = F.normalize(q.float(), dim=-1)
        nearest = torch.einsum("bhnd,hcd->bhnc", query_vectors, centroids).argmax(-1)
        own_centroid = centroids[torch.arange(heads, device=q.device)[:, None], nearest]  # (batch, heads, new, d)
        windows = cluster_windows(real, self.num_clusters, self.cluster_window)
        cosine = torch.einsum("bhnd,bhtd->bhnt", own_centroid, F.normalize(k.float(), dim=-1))
        cosine = cosine.masked_fill(~real[:, None, None, :], float("-inf"))
        index = cosine.topk(max(1, int(windows.max())), dim=-1, sorted=True).indices
        taken = torch.arange(index.shape[-1], device=q.device) < windows[:, None, None, None]
        query_position = torch.arange(total - new, total, device=q.device)[None, None, :, None]
        allowed = taken
        if causal:
            allowed = allowed & (index <= query_position)
        if self.shared_qk:
            allowed = allowed & (index != query_position)
        alone = ~allowed.any(-1, keepdim=True)
        compute = torch.promote_types(q.dtype, torch.float32)
        keys = gather_slots(k, index).to(compute)
        values = gather_slots(v, index).to(compute)
        scores = (keys @ q.to(compute)[..., None]).squeeze(-1) / math.sqrt(dim)
        weights = scores.masked_fill(~allowed, float("-inf")).masked_fill(alone, 0.0).softmax(-1)
        weights = F.dropout(weights, p=self.attention_dropout(q), training=self.training) * ~alone
        context = (weights[..., None, :] @ values).squeeze(-2)
        context = torch.where(alone, v[:, :, total - new :].to(compute), context)
        return (context * real[:, None, total - new :, None]).to(v.dtype)
