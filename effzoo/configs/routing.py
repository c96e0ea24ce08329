"""Config of the ``routing`` variant: online k-means routing attention (Roy et al. 2021, Routing Transformer)."""

from __future__ import annotations

import math

from ..attention.checks import positive_int
from .base import EffzooConfig, _is_int, _is_number
from .local import LocalConfig


class RoutingConfig(EffzooConfig):
    """Routing attention: each of ``num_clusters`` centroids takes its ``cluster_window`` nearest queries
    and keys (cosine), and a query attends the keys of every cluster that took it; beside the routing
    heads, ``num_local_heads`` heads attend a local window (the paper's mix).

    - ``num_clusters``: centroids per routing head; None for round(√``max_position_embeddings``) (23 at
      512, 8 at 64): the paper's choice, which balances the cost of routing (L · clusters) against that
      of attention (L · window). At most ``max_position_embeddings``.
    - ``cluster_window``: queries and keys each cluster takes; None for ⌈L / num_clusters⌉ at each
      sequence's number of real tokens L, so that the clusters together take every token once (on
      average), or an int (a sequence with fewer real tokens gives each cluster all of them).
    - ``num_local_heads``: how many heads (the first ones) run blocked local attention instead of
      routing; None for half of them (the paper's models mix local and routing heads; half is the mix
      of lucidrains' routing-transformer examples, and a converted BERT keeps the local context its
      heads lean on). 0: routing only.
    - ``local_window``: the block length of the local heads; a block sees itself and one block on each
      side (causal: itself and the block before), as the ``local`` variant with ``block_size`` =
      ``local_window``. Default 256, the ``local`` variant's block.
    - ``centroid_decay``: the exponential moving average of the centroids' online k-means, in (0, 1).
    - ``routing_seed``: seed of the mechanism's own generator for the initial centroids (random, unit
      norm, the same in every layer) until conversion calibrates them.
    - ``shared_qk``: keys are the (scaled) queries, as the paper's causal models; None for True
      when the model is causal (``is_decoder``, a causal LM) and False otherwise (BERT's Q and K differ).
      A causal model with separate queries and keys is refused.
    """

    model_type = "effzoo-routing"

    num_clusters: int | None = None
    cluster_window: int | None = None
    num_local_heads: int | None = None
    local_window: int = 256
    centroid_decay: float = 0.999
    routing_seed: int = 0
    shared_qk: bool | None = None

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int("num_clusters", self.num_clusters, "e.g. num_clusters=16, or None for about "
                     "√max_position_embeddings.", allow_none=True)
        if self.cluster_count() > self.max_position_embeddings:
            raise ValueError(
                f"num_clusters ({self.num_clusters}) is more than the positions of the model "
                f"(max_position_embeddings={self.max_position_embeddings}); choose at most "
                f"{self.max_position_embeddings} clusters, or None for about √max_position_embeddings."
            )
        positive_int("cluster_window", self.cluster_window, "e.g. cluster_window=64, or None for "
                     "⌈length / num_clusters⌉.", allow_none=True)
        self.local_head_count()
        positive_int("local_window", self.local_window, "Choose the local heads' block length, e.g. 256.")
        decay = self.centroid_decay
        if not _is_number(decay) or not 0.0 < decay < 1.0:
            raise ValueError(f"centroid_decay must be a number in (0, 1) (the paper uses 0.999), got {decay!r}.")
        if not _is_int(self.routing_seed):
            raise ValueError(f"routing_seed must be an integer, got {self.routing_seed!r}.")
        if self.shared_qk is not None and not isinstance(self.shared_qk, bool):
            raise ValueError(f"shared_qk must be True, False or None (True when causal), got {self.shared_qk!r}.")
        self.uses_shared_qk()

    def cluster_count(self) -> int:
        """The centroids of a routing head: ``num_clusters``, or round(√max_position_embeddings)."""
        if self.num_clusters is None:
            return max(1, round(math.sqrt(self.max_position_embeddings)))
        return self.num_clusters

    def local_head_count(self) -> int:
        """How many heads are local: ``num_local_heads``, or half the heads."""
        heads, local = self.num_attention_heads, self.num_local_heads
        if local is None:
            return heads // 2
        if not _is_int(local) or not 0 <= local <= heads:
            raise ValueError(
                f"num_local_heads must be an integer from 0 to num_attention_heads ({heads}), got {local!r}; "
                f"e.g. num_local_heads={heads // 2}, 0 for routing heads only, or None for half the heads."
            )
        return local

    @property
    def routing_head_count(self) -> int:
        """How many heads route: the heads that are not local."""
        return self.num_attention_heads - self.local_head_count()

    def uses_shared_qk(self) -> bool:
        """Whether the routing heads' keys are their queries: ``shared_qk``, or whether the model is causal.

        Read again when the mechanism is built, since a causal LM head makes its config a decoder then.
        """
        if self.shared_qk is None:
            return bool(self.is_decoder)
        if self.is_decoder and not self.shared_qk and self.routing_head_count:
            raise ValueError(
                "shared_qk=False cannot be causal (is_decoder=True, a causal LM): causal routing needs shared "
                "queries and keys (Roy et al. 2021), so that every query is routed with its own key. "
                "Set shared_qk=True (or None, which follows is_decoder)."
            )
        return self.shared_qk

    def local_attention_config(self) -> LocalConfig:
        """The config of the local heads' mechanism: the ``local`` variant with ``block_size=local_window``,
        one block on each side, no global special tokens, over ``num_local_heads`` heads of this model."""
        heads = max(1, self.local_head_count())
        return LocalConfig(
            hidden_size=heads * self.head_dim, num_attention_heads=heads, num_hidden_layers=self.num_hidden_layers,
            max_position_embeddings=self.max_position_embeddings,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            block_size=self.local_window, num_blocks_before=1, num_blocks_after=1, global_special_tokens=False,
        )
