"""Angular LSH attention (Kitaev et al. 2020, Reformer, §2): attend only inside a hash bucket.

A round hashes each vector x with a random rotation R: h(x) = argmax([xR ; −xR]) (Andoni et al.
2015), so that vectors at a small angle share a bucket. The items of a round (the positions with
shared query-key attention; the queries and the keys, 2L items, with separate ones) are sorted by
(bucket, position) with a stable sort and cut into chunks of ``lsh_chunk_length`` queries; the
queries of a chunk attend to the keys of their chunk, ``lsh_num_chunks_before`` chunks back and
``lsh_num_chunks_after`` ahead that share their bucket (and with ``causal`` none after them). So
query i attends key j in round r iff h_r(q_i) = h_r(k_j) and their chunks are near in round r's
sorted order; the pattern of all rounds is the union, and softmax runs over it exactly: each
round's scores of a pair are lowered by log(the number of rounds in which the pair meets), and
the rounds are combined through their log-sum-exps (eq. 3-4 of the paper), so a key that a query
meets in several rounds counts once.

With ``shared_qk`` the keys are the normalised queries (the paper's shared-QK attention, scaled as
Reformer's code scales them: see :func:`shared_qk_keys`); a token then attends to itself only when
nothing else is in its window. A real query that meets no key at
all attends to its own position. Padded tokens hash into a bucket of their own, so they take no
place in a real token's chunk.

``lsh_attention_pattern="chunks"`` is the pattern of Reformer's code (trax, Transformers' Reformer)
instead: a query attends its whole chunk window whatever the buckets, the windows run cyclically over
the concatenated rounds, and the rounds are combined without the meeting count (a key met in two
rounds weighs twice). Converted Transformers Reformers use it, so they compute what they computed there.

Memory is O(rounds · L · window), window = (before + 1 + after) · chunk: no L × L tensor. On the
CPU without dropout the rounds run on SDPA's fused flash kernel under additive masks (the scores
are never stored; see :class:`_WindowedRounds`); elsewhere the scores of each window are formed
explicitly.

The rotations are a buffer drawn from the mechanism's own generator (``hash_seed``), fixed in
evaluation (save → load gives the same outputs); each training forward draws new ones from a
seed taken from torch's global generator, so ``set_seed`` reproduces a run and reversible layers
or checkpointing, which restore that generator, redraw the same ones when they recompute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import AttentionMechanism


def lsh_buckets(vectors: torch.Tensor, rotations: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """Angular LSH buckets (rounds, batch, heads, length) of (batch, heads, length, head_dim) vectors.

    ``rotations`` is (heads, head_dim, rounds, Σ factor / 2), Transformers' Reformer layout: each
    head hashes with its own. With two factors (a, b) the bucket is h_a + a · h_b, each factor
    hashed with its own columns.
    """
    rotated = torch.einsum("bhld,hdrk->rbhlk", vectors.float(), rotations.float())
    buckets, offset, product = None, 0, 1
    for factor in factors:
        half = rotated[..., offset : offset + factor // 2]
        if factor == 1:  # a single bucket: no hashing, the exact limit
            choice = torch.zeros(half.shape[:-1], dtype=torch.long, device=half.device)
        else:
            choice = torch.cat([half, -half], dim=-1).argmax(dim=-1)
        buckets = choice if buckets is None else buckets + product * choice
        offset, product = offset + factor // 2, product * factor
    return buckets


@dataclass
class SortedRounds:
    """Every round's items sorted by (bucket, position) and cut into chunks.

    Items are the positions (shared query-key) or the L keys followed by the L queries, padded with
    dummy items to whole chunks. Per round: the sorted items' positions, buckets and query/key flags
    (rounds, batch, heads, items), and each position's slot in the sorted order as a query and as a
    key (rounds, batch, heads, length).
    """

    order: torch.Tensor
    position: torch.Tensor
    bucket: torch.Tensor
    is_query: torch.Tensor
    is_key: torch.Tensor
    query_slot: torch.Tensor
    key_slot: torch.Tensor
    chunk: int

    @classmethod
    def build(cls, query_buckets: torch.Tensor, key_buckets: torch.Tensor | None, real: torch.Tensor,
              bucket_count: int, chunk: int) -> SortedRounds:
        rounds, batch, heads, length = query_buckets.shape
        device = query_buckets.device
        positions = torch.arange(length, device=device)
        real = real[None, :, None, :].expand_as(query_buckets)
        padded_bucket = torch.full_like(query_buckets, bucket_count)  # padded tokens: a bucket of their own
        if key_buckets is None:  # shared query-key: one item per position
            bucket = torch.where(real, query_buckets, padded_bucket)
            position, kind = positions.expand_as(bucket), torch.zeros_like(bucket)
            is_query = is_key = real
            query_item = key_item = positions
        else:  # the keys, then the queries
            bucket = torch.cat([torch.where(real, key_buckets, padded_bucket),
                                torch.where(real, query_buckets, padded_bucket)], dim=-1)
            position = torch.cat([positions, positions]).expand_as(bucket)
            kind = torch.cat([torch.zeros_like(real), torch.ones_like(real)], dim=-1).long()
            is_key = torch.cat([real, torch.zeros_like(real)], dim=-1)
            is_query = torch.cat([torch.zeros_like(real), real], dim=-1)
            key_item, query_item = positions, positions + length
        items = bucket.shape[-1]
        extra = -items % chunk
        if extra:  # dummy items sort last and are neither queries nor keys
            def pad(x: torch.Tensor, value: int | bool) -> torch.Tensor:
                return F.pad(x, (0, extra), value=value)

            bucket, position, kind = pad(bucket, bucket_count + 1), pad(position, 0), pad(kind, 0)
            is_query, is_key = pad(is_query, False), pad(is_key, False)
        sort_key = (bucket * (length + 1) + position) * 2 + kind
        order = sort_key.argsort(dim=-1, stable=True)
        slot_of_item = order.argsort(dim=-1)
        return cls(
            order=order, position=position.gather(-1, order), bucket=bucket.gather(-1, order),
            is_query=is_query.gather(-1, order), is_key=is_key.gather(-1, order),
            query_slot=slot_of_item[..., query_item], key_slot=slot_of_item[..., key_item], chunk=chunk,
        )

    def chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(rounds, batch, heads, items, …) -> (rounds, batch, heads, chunks, chunk, …)."""
        return x.unflatten(3, (-1, self.chunk))


def neighbour_chunks(x: torch.Tensor, before: int, after: int, fill: float | bool) -> torch.Tensor:
    """For (…, chunks, chunk, …) chunked items, each chunk's window: chunks c − before … c + after
    concatenated, (…, chunks, window, …); chunks past either end are ``fill`` (no wraparound)."""
    if x.dtype == torch.bool:
        return neighbour_chunks(x.to(torch.uint8), before, after, int(fill)).bool()
    num_chunks = x.shape[3]
    padded = F.pad(x.movedim(3, -1), (before, after), value=fill).movedim(-1, 3)
    return torch.cat([padded[:, :, :, shift : shift + num_chunks] for shift in range(before + after + 1)], dim=4)


def cyclic_neighbour_chunks(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Each chunk's window as Reformer's code forms it (trax, Transformers' ``_look_adjacent``): the
    rounds' chunks (rounds, batch, heads, chunks, chunk, …) are one cyclic sequence, so the first chunk
    of a round sees the last chunk of the round before it (and round 0 the last round's)."""
    flat = x.movedim(0, 2).flatten(2, 3)
    windows = torch.cat([flat.roll(-shift, dims=2) for shift in range(-before, after + 1)], dim=3)
    return windows.unflatten(2, (x.shape[0], x.shape[3])).movedim(2, 0)


def shared_qk_keys(q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The keys of shared query-key attention: each query scaled to root-mean-square 1 (length √d).

    The paper normalises the keys (§2); Reformer's code (trax, Transformers) scales them to unit
    length and takes q·k without the 1/√d, which is q·k̂ = |q| cos θ. Keys of length √d under the
    usual 1/√d give the same scores, so shared-QK checkpoints of Transformers' Reformer compute here
    what they compute there.
    """
    return q * torch.rsqrt(q.float().pow(2).mean(dim=-1, keepdim=True) + eps).to(q.dtype)


class LSHAttention(AttentionMechanism):
    """Reformer's LSH attention, multi-round, bidirectional or causal, shared or separate Q and K.

    Config fields (``EffzooReformerConfig``): ``num_hashes``, ``num_buckets``, ``lsh_chunk_length``,
    ``lsh_num_chunks_before``, ``lsh_num_chunks_after``, ``shared_qk``, ``hash_seed``,
    ``lsh_attention_pattern``. Each head hashes with its own rotations.
    """

    supports_causal = True
    no_attention_weights_reason = (
        "LSH attention's weights are spread over its hash rounds and are not assembled into one tensor."
    )
    conversion_init = "LSH rotations: drawn from hash_seed (a buffer, not a parameter)"

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.num_hashes = config.num_hashes
        self.bucket_factors = config.bucket_factors()
        self.bucket_count = config.bucket_count
        self.chunk_length = config.lsh_chunk_length
        self.chunks_before = config.lsh_num_chunks_before
        self.chunks_after = config.lsh_num_chunks_after
        self.shared_qk = config.shared_qk
        self.hash_seed = config.hash_seed
        self.pattern = config.lsh_attention_pattern
        rotation_size = sum(factor // 2 for factor in self.bucket_factors)
        self.register_buffer(
            "rotations", torch.empty(config.num_attention_heads, config.head_dim, self.num_hashes, rotation_size)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the evaluation rotations from ``hash_seed`` (on the CPU, so every device gets the same)."""
        self.rotations.copy_(self.draw_rotations(self.hash_seed))

    def draw_rotations(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.rotations.shape, generator=generator).to(self.rotations.device)

    def current_rotations(self) -> torch.Tensor:
        """The buffer in evaluation; in training new rotations from a seed drawn from torch's generator."""
        if not self.training:
            return self.rotations
        return self.draw_rotations(int(torch.randint(0, 2**62, ())))

    def buckets(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query and key buckets (rounds, batch, heads, length) under the current rotations; None for
        the keys with shared query-key attention (its keys are the queries)."""
        rotations = self.current_rotations()
        query_buckets = lsh_buckets(q, rotations, self.bucket_factors)
        return query_buckets, None if self.shared_qk else lsh_buckets(k, rotations, self.bucket_factors)

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
        if self.shared_qk:
            k = shared_qk_keys(q)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if q.shape[-2] != k.shape[-2]:
            return self._attend_cached_keys(q, k, v, padding_mask, causal)
        batch, _, length, _ = q.shape
        if self.pattern == "chunks" and length <= self.chunk_length:  # one chunk: plain attention, as Reformer's code
            return self._attend_under_mask(q, k, v, None, padding_mask, causal)
        real = padding_mask if padding_mask is not None else q.new_ones(batch, length, dtype=torch.bool)
        query_buckets, key_buckets = self.buckets(q, k)
        # A chunk holds lsh_chunk_length queries: with separate queries and keys, twice as many items.
        chunk = self.chunk_length if self.shared_qk else 2 * self.chunk_length
        rounds = SortedRounds.build(query_buckets, key_buckets, real, self.bucket_count, chunk)
        if q.device.type == "cpu" and self.attention_dropout(q) == 0.0:
            context, met = self._attend_rounds_fused(q, k, v, rounds, causal)
        else:  # the fused CPU kernel draws no dropout: elsewhere the scores are formed explicitly
            contexts, log_normalisers = self._attend_rounds(q, k, v, rounds, causal)
            context, met = self._combine_rounds(contexts, log_normalisers)
        return _alone_and_padding(context, met, v, real)

    def _attend_cached_keys(self, q, k, v, padding_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        """Decoding: the new queries attend every cached key that shares a bucket with them in some round.

        The chunks of the parallel forward depend on tokens not yet generated, so a step cannot cut
        them; it attends the whole bucket instead, which is the parallel pattern whenever the chunk
        window covers the sequence. The mask is (new tokens × cached tokens): one row per step.
        """
        query_buckets, key_buckets = self.buckets(q, k)
        if key_buckets is None:
            key_buckets = self.buckets(k, k)[0]
        allowed = (query_buckets[..., :, None] == key_buckets[..., None, :]).any(dim=0)
        return self._attend_under_mask(q, k, v, allowed, padding_mask, causal)

    def _attend_under_mask(self, q, k, v, allowed: torch.Tensor | None, padding_mask: torch.Tensor | None,
                           causal: bool) -> torch.Tensor:
        """Exact attention of the last queries over the keys where ``allowed`` (None: all pairs), under the
        rules of every LSH window: causal, no shared-QK token attends itself, a query alone takes itself."""
        query_length, key_length = q.shape[-2], k.shape[-2]
        query_positions = torch.arange(key_length - query_length, key_length, device=q.device)
        key_positions = torch.arange(key_length, device=q.device)
        if allowed is None:
            allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=q.device)
        if causal:
            allowed = allowed & (key_positions <= query_positions[:, None])
        if self.shared_qk:
            allowed = allowed & (key_positions != query_positions[:, None])
        real_queries = None
        if padding_mask is not None:
            allowed = allowed & padding_mask[:, None, None, :]
            real_queries = padding_mask[:, key_length - query_length :]
        allowed = allowed | (~allowed.any(dim=-1, keepdim=True) & (key_positions == query_positions[:, None]))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return context if real_queries is None else context * real_queries[:, None, :, None]

    def _windows(self, x: torch.Tensor, fill: float | int) -> torch.Tensor:
        """Each chunk's neighbour window of chunked items: within the round ("buckets"), or Reformer's
        cyclic windows over the concatenated rounds ("chunks")."""
        if self.pattern == "chunks":
            return cyclic_neighbour_chunks(x, self.chunks_before, self.chunks_after)
        return neighbour_chunks(x, self.chunks_before, self.chunks_after, fill)

    def _items(self, x: torch.Tensor, rounds: SortedRounds, as_query: bool) -> torch.Tensor:
        """(batch, heads, length, d) vectors laid out as the sorted items of every round, chunked."""
        if not self.shared_qk:
            zeros = torch.zeros_like(x)
            x = torch.cat([zeros, x] if as_query else [x, zeros], dim=2)
        extra = rounds.order.shape[-1] - x.shape[2]
        x = F.pad(x, (0, 0, 0, extra))
        index = rounds.order[..., None].expand(-1, -1, -1, -1, x.shape[-1])
        return rounds.chunks(x[None].expand(index.shape[0], -1, -1, -1, -1).gather(3, index))

    def _attend_rounds(self, q, k, v, rounds: SortedRounds, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each round's context and log-normaliser at every position: (rounds, batch, heads, length, d) and
        (rounds, batch, heads, length), −inf where a query meets no key in that round."""
        queries = self._items(q, rounds, as_query=True)
        keys = self._windows(self._items(k, rounds, as_query=False), 0.0)
        values = self._windows(self._items(v, rounds, as_query=False), 0.0)
        compute = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least
        scores = torch.einsum("rbhcqd,rbhckd->rbhcqk", queries.to(compute), keys.to(compute)) / math.sqrt(q.shape[-1])

        positions = rounds.chunks(rounds.position.int())
        row_position, col_position = positions, self._windows(positions, 0)
        if self.pattern == "chunks":  # the whole window, whatever the bucket
            allowed = rounds.chunks(rounds.is_query)[..., :, None] & self._windows(rounds.chunks(rounds.is_key),
                                                                                   False)[..., None, :]
        else:
            # Query rows and key columns meet where their buckets are equal: non-queries and non-keys get
            # codes that equal nothing.
            bucket = rounds.bucket.int()
            row_code = rounds.chunks(torch.where(rounds.is_query, bucket, -2))
            col_code = self._windows(rounds.chunks(torch.where(rounds.is_key, bucket, -1)), -1)
            allowed = row_code[..., :, None] == col_code[..., None, :]
        if causal:
            allowed &= col_position[..., None, :] <= row_position[..., :, None]
        if self.shared_qk:
            allowed &= col_position[..., None, :] != row_position[..., :, None]
        met = allowed.any(dim=-1)
        # Rows that meet no key (padding, dummy items) keep finite scores, so that no gradient is NaN.
        scores = scores.masked_fill(~(allowed | ~met[..., None]), float("-inf"))
        if self.num_hashes > 1 and self.pattern == "buckets":
            scores = scores - self._meetings(rounds, row_position, col_position).to(compute).log_()
        log_normaliser = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - log_normaliser[..., None]).masked_fill(~met[..., None], 0.0)
        log_normaliser = log_normaliser.masked_fill(~met, float("-inf"))
        weights = F.dropout(weights, p=self.attention_dropout(q), training=True) if self.training else weights
        context = torch.einsum("rbhcqk,rbhckd->rbhcqd", weights.to(values.dtype), values)
        slot = rounds.query_slot
        context = context.flatten(3, 4).gather(3, slot[..., None].expand(-1, -1, -1, -1, q.shape[-1]))
        return context, log_normaliser.flatten(3, 4).gather(3, slot)

    def _attend_rounds_fused(self, q, k, v, rounds: SortedRounds, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The rounds on SDPA's fused CPU kernel (flash attention under an additive mask, which also gives each
        row's log-sum-exp), merged by their log-sum-exps: the context (batch, heads, length, d) and which
        positions met a key in some round. No scores are stored; the backward recomputes them per window."""
        batch, heads, length, dim = q.shape
        layout = WindowLayout(rounds.order.shape[0], batch * heads, length, rounds.order.shape[-1], rounds.chunk,
                              self.chunks_before, self.chunks_after, cyclic=self.pattern == "chunks")
        masks, met = self._window_masks(rounds, layout, causal, torch.promote_types(q.dtype, torch.float32))
        item_index = layout.arrange(rounds.position + length * torch.arange(
            batch * heads, device=q.device).view(1, batch, heads, 1)).flatten()
        # Keys and values are gathered with their window padding, so that windows are views of them.
        key_index = layout.pad(item_index.view(layout.groups, -1), None).flatten()
        items = [x.reshape(-1, dim).index_select(0, index).view(layout.groups, -1, dim)
                 for x, index in ((q, item_index), (k, key_index), (v, key_index))]
        query_index = layout.flat_slots(rounds.query_slot).flatten()
        context, met = _WindowedRounds.apply(*items, layout, masks, met, item_index, query_index)
        return context.view(batch, heads, length, dim), met.view(batch, heads, length)

    def _window_masks(self, rounds: SortedRounds, layout: WindowLayout, causal: bool,
                      dtype: torch.dtype) -> tuple[list[tuple[slice, torch.Tensor]], torch.Tensor]:
        """The kernel's additive masks (groups, chunks, chunk, window) piece by piece (0 where allowed, −log(the
        number of rounds in which the pair meets) with several rounds of the "buckets" pattern, −inf elsewhere)
        and which sorted items meet any key (groups, items): built from per-item integer codes, never L × L."""
        device = rounds.order.device
        allowed_value = torch.zeros((), dtype=dtype, device=device)
        blocked_value = torch.tensor(float("-inf"), dtype=dtype, device=device)
        is_query, is_key = layout.arrange(rounds.is_query), layout.arrange(rounds.is_key)
        if layout.cyclic:  # the whole window, whatever the bucket
            position = layout.arrange(rounds.position.int())
            if causal:  # codes that make non-queries see nothing and non-keys be seen by nothing
                rows = layout.chunks(torch.where(is_query, position, -1))
                cols = layout.windows(torch.where(is_key, position, layout.length + 1), 0)
            else:
                rows, cols = layout.chunks(is_query), layout.windows(is_key, False)
                rows_at, cols_at = layout.chunks(position), layout.windows(position, 0)
            pair_allowed = None
        else:
            bucket = layout.arrange(rounds.bucket.int())
            rows = layout.chunks(torch.where(is_query, bucket, -2))
            cols = layout.windows(torch.where(is_key, bucket, -1), -1)
            pair_allowed = self._window_rule(layout, causal, device)
            if layout.rounds > 1:
                query_codes, key_codes = self._other_round_codes(rounds, layout)

        masks, met = [], torch.empty(layout.groups, layout.chunks_per_group, layout.chunk, dtype=torch.bool,
                                     device=device)
        for piece, round_index in layout.pieces():
            row, col = rows[piece][..., :, None], cols[piece][..., None, :]
            if layout.cyclic:
                if causal:
                    allowed = col < row if self.shared_qk else col <= row
                else:
                    allowed = row & col
                    if self.shared_qk:
                        allowed &= cols_at[piece][..., None, :] != rows_at[piece][..., :, None]
            else:
                allowed = row == col
                if pair_allowed is not None:
                    allowed &= pair_allowed
            met[piece] = allowed.any(dim=-1)
            if layout.cyclic or layout.rounds == 1:
                masks.append((piece, torch.where(allowed, allowed_value, blocked_value)))
                continue
            others = None  # in how many other rounds the pair meets: −log(1 + others) where allowed
            for other in range(layout.rounds):
                if other != round_index:
                    offset = key_codes[other][piece][..., None, :] - query_codes[other][piece][..., :, None]
                    meets = (offset >= -self.chunks_before) & (offset <= self.chunks_after)
                    others = meets.to(dtype) if others is None else others.add_(meets)
            masks.append((piece, torch.where(allowed, others.log1p_().neg_(), blocked_value)))
        return masks, met.flatten(1)

    def _window_rule(self, layout: WindowLayout, causal: bool, device: torch.device) -> torch.Tensor | None:
        """(chunk, window) pairs allowed by causality and shared-QK's no-self rule, for keys of the query's bucket.

        In the "buckets" pattern a window is consecutive sorted items and, within a bucket, items are sorted by
        position with a key before the query of its position: so a same-bucket key is at or before the query's
        position exactly when its place in the window is before the query's, and in shared-QK the query's own
        key is the query's own place."""
        if not causal and not self.shared_qk:
            return None
        place = torch.arange(layout.window, device=device)
        query_place = layout.front + torch.arange(layout.chunk, device=device)[:, None]
        return place < query_place if causal else place != query_place

    def _other_round_codes(self, rounds: SortedRounds,
                           layout: WindowLayout) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """For every round r′, the code bucket · span + chunk that each item's position has in r′ as a query (rows,
        chunked) and as a key (windows): a pair meets in r′ iff key code − query code is in [−before, after]."""
        span = layout.items // layout.chunk + self.chunks_before + self.chunks_after + 1
        sorted_code = rounds.bucket.int() * span + torch.arange(
            layout.items, device=rounds.order.device, dtype=torch.int32) // layout.chunk
        query_code, key_code = sorted_code.gather(-1, rounds.query_slot), sorted_code.gather(-1, rounds.key_slot)
        position = rounds.position
        rows = [layout.chunks(layout.arrange(query_code[other][None].expand(position.shape[0], -1, -1, -1).gather(
            -1, position))) for other in range(layout.rounds)]
        cols = [layout.windows(layout.arrange(key_code[other][None].expand(position.shape[0], -1, -1, -1).gather(
            -1, position)), -(1 << 30)) for other in range(layout.rounds)]
        return rows, cols

    def _meetings(self, rounds: SortedRounds, row_position: torch.Tensor, col_position: torch.Tensor) -> torch.Tensor:
        """In how many rounds each (query, key) pair of each round's windows meets (≥ 1 where allowed)."""
        # A pair meets in a round iff bucket · span + chunk of the key minus that of the query is in
        # [−before, after]: span exceeds any chunk offset, so unequal buckets never land in the range.
        span = rounds.order.shape[-1] // rounds.chunk + self.chunks_before + self.chunks_after + 1
        sorted_code = rounds.bucket.int() * span + torch.arange(rounds.order.shape[-1], device=rounds.order.device,
                                                                dtype=torch.int32) // rounds.chunk
        query_code = sorted_code.gather(-1, rounds.query_slot)
        key_code = sorted_code.gather(-1, rounds.key_slot)
        rows, cols = row_position.long().flatten(3), col_position.long().flatten(3)
        count = torch.zeros(*row_position.shape, col_position.shape[-1], dtype=torch.int32, device=rows.device)
        for other in range(self.num_hashes):
            offset = (_lookup(key_code[other], cols, col_position.shape)[..., None, :]
                      - _lookup(query_code[other], rows, row_position.shape)[..., :, None])
            count += (offset >= -self.chunks_before) & (offset <= self.chunks_after)
        return count.clamp(min=1)

    @staticmethod
    def _combine_rounds(contexts: torch.Tensor, log_normalisers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_r exp(lse_r − logsumexp_r lse_r) · context_r, and which positions met a key in some round."""
        met = torch.isfinite(log_normalisers).any(dim=0)
        log_normalisers = log_normalisers.masked_fill(~met, 0.0)  # finite, so that no gradient is NaN
        share = torch.exp(log_normalisers - torch.logsumexp(log_normalisers, dim=0)).masked_fill(~met, 0.0)
        return (share[..., None] * contexts.to(share.dtype)).sum(0), met


def _alone_and_padding(context: torch.Tensor, met: torch.Tensor, v: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """A real query that met no key in any round takes its own value; padded positions are zero."""
    alone = ~met & real[:, None, :]
    context = torch.where(alone[..., None], v.to(context.dtype), context)
    return (context * real[:, None, :, None]).to(v.dtype)


@dataclass
class WindowLayout:
    """Where the sorted items of every round lie for the fused kernel: (groups, items) with a group per round,
    batch row and head ("buckets": a window stays inside its round), or per batch row and head with the rounds
    concatenated (Reformer's cyclic windows, which run from one round into the next). A group's chunks are the
    kernel's heads; each chunk's window is an overlapping view of the padded items, never copied."""

    rounds: int
    batch_heads: int
    length: int
    items: int
    chunk: int
    before: int
    after: int
    cyclic: bool

    #: Mask elements built at a time: bounds the temporaries (codes, counts) of one piece's mask.
    piece_elements = 1 << 22

    @property
    def groups(self) -> int:
        return self.batch_heads if self.cyclic else self.rounds * self.batch_heads

    @property
    def chunks_per_group(self) -> int:
        return (self.rounds if self.cyclic else 1) * self.items // self.chunk

    @property
    def front(self) -> int:
        return self.before * self.chunk

    @property
    def window(self) -> int:
        return (self.before + 1 + self.after) * self.chunk

    def arrange(self, x: torch.Tensor) -> torch.Tensor:
        """(rounds, batch, heads, items, …) -> (groups, items per group, …), contiguous."""
        if self.cyclic:
            return x.movedim(0, 2).flatten(0, 1).flatten(1, 2).contiguous()
        return x.flatten(0, 2).contiguous()

    def flat_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """Round r's sorted slots (rounds, batch, heads, n) as indices into the flattened (groups · items)."""
        rounds, batch, heads = slots.shape[:3]
        group = torch.arange(batch * heads, device=slots.device).view(1, batch, heads, 1)
        in_round = torch.arange(rounds, device=slots.device).view(rounds, 1, 1, 1)
        first = group * rounds + in_round if self.cyclic else in_round * batch * heads + group
        return first * self.items + slots

    def chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(groups, items, …) -> (groups, chunks, chunk, …)."""
        return x.unflatten(1, (-1, self.chunk))

    def pad(self, x: torch.Tensor, fill: float | int | bool | None) -> torch.Tensor:
        """(groups, items, …) with the window padding: before · chunk items in front and after · chunk behind,
        the other end's (cyclic), ``fill``, or (None) copies of the end items, whose mask hides them."""
        back = self.after * self.chunk
        if self.cyclic:
            return torch.cat([x[:, x.shape[1] - self.front :], x, x[:, :back]], dim=1)

        def pad(count: int, end: slice) -> torch.Tensor:
            if fill is None:
                return x[:, end].expand(x.shape[0], count, *x.shape[2:])
            return x.new_full((x.shape[0], count, *x.shape[2:]), fill)

        return torch.cat([pad(self.front, slice(0, 1)), x, pad(back, slice(-1, None))], dim=1)

    def window_view(self, padded: torch.Tensor) -> torch.Tensor:
        """(groups, padded items, …) -> (groups, chunks, window, …), chunk c's window the padded items
        c · chunk … c · chunk + window: an overlapping view, no copy."""
        inner = math.prod(padded.shape[2:])
        chunks = (padded.shape[1] - self.window) // self.chunk + 1
        size = (padded.shape[0], chunks, self.window, *padded.shape[2:])
        return padded.as_strided(size, (padded.shape[1] * inner, self.chunk * inner, *padded.stride()[1:]))

    def windows(self, x: torch.Tensor, fill: float | int | bool) -> torch.Tensor:
        """(groups, items, …) -> (groups, chunks, window, …): chunks c − before … c + after of each chunk c,
        the other end's (cyclic) or ``fill`` past the ends."""
        return self.window_view(self.pad(x, fill))

    def fold_into(self, folded: torch.Tensor, grad: torch.Tensor) -> None:
        """Add the gradient of :meth:`window_view`, (groups, chunks, window, d), into ``folded``, (groups, padded
        items, d): each padded item gets the sum over the windows it is in."""
        groups, chunks, _, dim = grad.shape
        items, chunk = chunks * self.chunk, self.chunk
        by_place = grad.transpose(1, 2)  # the kernel's gradient is laid out (groups, window, chunks, d)
        for shift in range(self.before + 1 + self.after):
            target = folded[:, shift * chunk : shift * chunk + items].view(groups, chunks, chunk, dim)
            target.transpose(1, 2).add_(by_place[:, shift * chunk : (shift + 1) * chunk])

    def pieces(self) -> list[tuple[slice, int | None]]:
        """Slices of groups whose masks are built and run together, each inside one round (and which) unless cyclic."""
        per_group = self.chunks_per_group * self.chunk * self.window
        step = max(1, self.piece_elements // per_group)
        if self.cyclic:
            return [(slice(start, min(start + step, self.groups)), None) for start in range(0, self.groups, step)]
        return [(slice(r * self.batch_heads + start, r * self.batch_heads + min(start + step, self.batch_heads)), r)
                for r in range(self.rounds) for start in range(0, self.batch_heads, step)]


class _WindowedRounds(torch.autograd.Function):
    """Exact softmax over the union of every round's windows on SDPA's fused CPU flash kernel.

    Each round's windows give an output and a log-sum-exp per sorted query; at each position the rounds
    merge with weights exp(lse_r − lse). The backward runs the kernel's backward on each round with the
    *merged* output and log-sum-exp, so the probabilities it recomputes are those of the union softmax:
    exact gradients, with only the sorted items, the masks, the output and the log-sum-exp saved.
    Queries come as (groups, items, d), keys and values with their window padding (:meth:`WindowLayout.pad`).
    """

    @staticmethod
    def forward(ctx: Any, q_items: torch.Tensor, k_items: torch.Tensor, v_items: torch.Tensor, layout: WindowLayout,
                masks: list[tuple[slice, torch.Tensor]], met_items: torch.Tensor, item_index: torch.Tensor,
                query_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dim = q_items.shape[-1]
        queries, keys, values = layout.chunks(q_items), layout.window_view(k_items), layout.window_view(v_items)
        out = torch.empty_like(queries)
        lse = None
        for piece, mask in masks:
            piece_out, piece_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                queries[piece], keys[piece], values[piece], 0.0, False, attn_mask=mask)
            if lse is None:  # the kernel's log-sum-exp dtype
                lse = piece_lse.new_empty(queries.shape[:-1])
            out[piece], lse[piece] = piece_out, piece_lse
        shape = (layout.rounds, layout.batch_heads, layout.length)
        round_out = out.view(-1, dim).index_select(0, query_index).view(*shape, dim)
        round_lse = lse.view(-1).index_select(0, query_index).view(shape)
        round_met = met_items.view(-1).index_select(0, query_index).view(shape)
        round_lse = round_lse.masked_fill(~round_met, float("-inf"))
        met = round_met.any(dim=0)
        total = torch.logsumexp(round_lse, dim=0).masked_fill(~met, 0.0)  # finite: no key means zero weight
        share = torch.exp(round_lse - total)
        context = (share[..., None] * round_out.to(share.dtype)).sum(0)
        ctx.layout, ctx.masks, ctx.item_index = layout, masks, item_index
        ctx.save_for_backward(q_items, k_items, v_items, context.to(q_items.dtype), total)
        ctx.mark_non_differentiable(met)
        return context, met

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q_items, k_items, v_items, context, total = ctx.saved_tensors
        layout = ctx.layout
        queries, keys, values = layout.chunks(q_items), layout.window_view(k_items), layout.window_view(v_items)

        item_index = ctx.item_index.view(layout.groups, -1)
        grad = grad.to(q_items.dtype)

        def at_items(x: torch.Tensor, piece: slice) -> torch.Tensor:  # a piece's sorted items' rows of x
            index = item_index[piece]
            return layout.chunks(x.reshape(-1, *x.shape[2:]).index_select(0, index.flatten()).view(
                *index.shape, *x.shape[2:]))

        grads = [torch.empty_like(q_items), torch.zeros_like(k_items), torch.zeros_like(v_items)]
        for piece, mask in ctx.masks:
            grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                at_items(grad, piece), queries[piece], keys[piece], values[piece], at_items(context, piece),
                at_items(total, piece), 0.0, False, attn_mask=mask)
            layout.chunks(grads[0][piece]).copy_(grad_q)
            layout.fold_into(grads[1][piece], grad_k)
            layout.fold_into(grads[2][piece], grad_v)
        return *grads, None, None, None, None, None


def _lookup(table: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``table`` (batch, heads, length) read at every round's ``index`` (rounds, batch, heads, n), as ``shape``."""
    return table[None].expand(index.shape[0], -1, -1, -1).gather(-1, index).view(shape)
