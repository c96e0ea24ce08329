"""Config of the ``reformer`` variant: angular LSH attention (Kitaev et al. 2020, Reformer)."""

from __future__ import annotations

import math

from .base import EffzooConfig, _is_int


class EffzooReformerConfig(EffzooConfig):
    """LSH attention: ``num_hashes`` rounds of angular hashing into buckets, each round sorted by
    bucket and cut into chunks of ``lsh_chunk_length`` that attend to themselves,
    ``lsh_num_chunks_before`` chunks back and ``lsh_num_chunks_after`` ahead, inside their bucket.

    - ``num_buckets``: an even integer, or a pair of even integers whose product is the bucket count
      (factorised hashing, as Transformers' ``ReformerConfig``), or None for about
      2 · ``max_position_embeddings`` / ``lsh_chunk_length`` (rounded up to an even number); 1 is a
      single bucket (no hashing: with a chunk that covers the input, exact attention).
    - ``shared_qk``: the paper's shared query-key attention (keys are the normalised queries; a token
      attends to itself only when nothing else is in its buckets), or separate queries and keys
      hashed with the same rotations (False, the default, as BERT's Q and K differ).
    - ``hash_seed``: seed of the mechanism's own generator for the rotations used in evaluation.
    - ``lsh_attention_pattern``: ``"buckets"`` (the paper's pattern: a query attends the keys of its own
      bucket in its chunk window, each key once however many rounds it meets it in) or ``"chunks"``
      (Reformer's code, as trax and Transformers run it: the whole window whatever the bucket, the
      windows cyclic over the concatenated rounds, a key counted once per round it is met in, and
      plain attention when the input fits one chunk). ``"chunks"`` is what a converted Transformers
      Reformer uses, so that it computes exactly what it did there.

    Named with the Effzoo prefix: Transformers' Auto classes resolve a config by class name, and
    ``ReformerConfig`` is Transformers' own.
    """

    model_type = "effzoo-reformer"

    num_hashes: int = 2
    num_buckets: int | list[int] | None = None
    lsh_chunk_length: int = 64
    lsh_num_chunks_before: int = 1
    lsh_num_chunks_after: int = 1
    shared_qk: bool = False
    hash_seed: int = 0
    lsh_attention_pattern: str = "buckets"

    def check_backbone(self) -> None:
        super().check_backbone()
        for name in ("num_hashes", "lsh_chunk_length"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}; e.g. {name}=2.")
        for name in ("lsh_num_chunks_before", "lsh_num_chunks_after"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}; e.g. {name}=1.")
        if not isinstance(self.shared_qk, bool):
            raise ValueError(f"shared_qk must be True or False, got {self.shared_qk!r}.")
        if not _is_int(self.hash_seed):
            raise ValueError(f"hash_seed must be an integer, got {self.hash_seed!r}.")
        if self.lsh_attention_pattern not in ("buckets", "chunks"):
            raise ValueError(f"lsh_attention_pattern must be 'buckets' (the paper's) or 'chunks' (Reformer's code, "
                             f"for Transformers' checkpoints), got {self.lsh_attention_pattern!r}.")
        self.bucket_factors()

    def bucket_factors(self) -> tuple[int, ...]:
        """The bucket count as its factors: ``(n,)`` for n buckets, ``(a, b)`` for a · b factorised ones."""
        buckets = self.num_buckets
        if buckets is None:
            auto = max(2, math.ceil(2 * self.max_position_embeddings / self.lsh_chunk_length))
            return (auto + auto % 2,)
        factors = tuple(buckets) if isinstance(buckets, (list, tuple)) else (buckets,)
        single = factors == (1,)  # one bucket: no hashing (the exact limit, for tests and comparisons)
        if not single and (not 1 <= len(factors) <= 2 or not all(_is_int(factor) and factor >= 2 and factor % 2 == 0
                                                                 for factor in factors)):
            raise ValueError(
                f"num_buckets must be a positive even integer or a pair of them (factorised buckets), got "
                f"{buckets!r}; e.g. num_buckets=32, num_buckets=[8, 4], None for about 2 · length / chunk, or 1 for "
                "a single bucket (no hashing)."
            )
        return factors

    @property
    def bucket_count(self) -> int:
        """How many buckets a round hashes into: the product of :meth:`bucket_factors`."""
        return math.prod(self.bucket_factors())

