"""LSH attention against exact softmax attention under its own pattern, written from the definition.

The reference takes the mechanism's buckets of a forward, sorts each round's items by (bucket,
position) in Python, cuts the chunks, and allows query i to see key j where they share a bucket and
their chunks are near in some round; shared-QK drops a token's own key unless nothing else is
allowed, and a query that sees nothing sees itself. Exact attention under that mask
(``dense_reference_attention``) is what the mechanism must return. Reformer's own pattern
(``lsh_attention_pattern="chunks"``) has its reference too: the cyclic windows over the concatenated
rounds, each key weighted by the number of windows it is met in.
"""

from __future__ import annotations

import pytest
import torch

from effzoo.attention.full import FullAttention
from effzoo.attention.lsh import LSHAttention, shared_qk_keys
from effzoo.attention.reference import dense_reference_attention
from effzoo.configs.reformer import EffzooReformerConfig
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)


def mechanism(**fields) -> LSHAttention:
    fields = {"num_hashes": 3, "num_buckets": 4, "lsh_chunk_length": 3, "lsh_num_chunks_before": 1,
              "lsh_num_chunks_after": 1, **fields}
    return LSHAttention(EffzooReformerConfig(**TINY, **fields)).eval()


def qkv(batch: int = 2, length: int = 19, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(4)
    return [torch.randn(batch, 2, length, 8, generator=generator, dtype=dtype) for _ in range(3)]


def padding_mask(batch: int, length: int, padding: str | None) -> torch.Tensor | None:
    if padding is None:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    cut = [length - 5 * row for row in range(batch)]
    for row, real in enumerate(cut):
        mask[row] = torch.arange(length) < real if padding == "right" else torch.arange(length) >= length - real
    return mask


def reference_pattern(attention: LSHAttention, q, k, mask, causal) -> torch.Tensor:
    """(batch, heads, L, L) allowed pairs, from the definition, with Python sorting."""
    batch, heads, length, _ = q.shape
    query_buckets, key_buckets = attention.buckets(q, k)
    if key_buckets is None:
        key_buckets = query_buckets
    real = mask if mask is not None else torch.ones(batch, length, dtype=torch.bool)
    per_chunk = attention.chunk_length if attention.shared_qk else 2 * attention.chunk_length
    allowed = torch.zeros(batch, heads, length, length, dtype=torch.bool)
    for r in range(attention.num_hashes):
        for b in range(batch):
            positions = [p for p in range(length) if real[b, p]]
            for h in range(heads):
                qb, kb = query_buckets[r, b, h].tolist(), key_buckets[r, b, h].tolist()
                if attention.shared_qk:
                    items = sorted((qb[p], p, "both") for p in positions)
                else:
                    items = sorted([(kb[p], p, 0) for p in positions] + [(qb[p], p, 1) for p in positions])
                chunk_of = {(p, kind): slot // per_chunk for slot, (_, p, kind) in enumerate(items)}
                query_chunk = {p: chunk_of[(p, "both" if attention.shared_qk else 1)] for p in positions}
                key_chunk = {p: chunk_of[(p, "both" if attention.shared_qk else 0)] for p in positions}
                for i in positions:
                    for j in positions:
                        near = -attention.chunks_before <= key_chunk[j] - query_chunk[i] <= attention.chunks_after
                        if qb[i] == kb[j] and near and not (causal and j > i) and not (attention.shared_qk and i == j):
                            allowed[b, h, i, j] = True
    rows = torch.arange(length)
    alone = ~allowed.any(-1) & real[:, None, :]
    allowed[:, :, rows, rows] |= alone
    return allowed


def reference_output(attention: LSHAttention, q, k, v, mask, causal) -> torch.Tensor:
    keys = shared_qk_keys(q) if attention.shared_qk else k
    return dense_reference_attention(q, keys, v, reference_pattern(attention, q, keys, mask, causal))


@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("num_hashes, num_buckets", [(1, 4), (3, 4), (2, [2, 4])])
def test_lsh_equals_exact_attention_under_its_pattern(shared_qk, causal, padding, num_hashes, num_buckets, device):
    attention = mechanism(shared_qk=shared_qk, num_hashes=num_hashes, num_buckets=num_buckets).to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(2, 19, padding)
    mask = mask.to(device) if mask is not None else None
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    expected = reference_output(attention.cpu(), q.cpu(), k.cpu(), v.cpu(), mask.cpu() if mask is not None else None,
                                causal)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared_qk", [False, True])
def test_gradients_equal_the_reference(shared_qk):
    attention = mechanism(shared_qk=shared_qk)
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, 19, "right")
    out = attention(q, k, v, padding_mask=mask, causal=False)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v), allow_unused=True)
    keys = shared_qk_keys(q) if shared_qk else k
    allowed = reference_pattern(attention, q.detach(), keys.detach(), mask, False)
    expected = dense_reference_attention(q, keys, v, allowed)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v), allow_unused=True)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None or not got.abs().max() > 0
            continue
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_and_a_covering_chunk_equal_full_attention(causal):
    attention = mechanism(num_hashes=2, num_buckets=1, lsh_chunk_length=32)
    q, k, v = qkv()
    mask = padding_mask(2, 19, "right")
    full = FullAttention(EffzooReformerConfig(**TINY)).eval()
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask, causal=causal),
                               full(q, k, v, padding_mask=mask, causal=causal), atol=1e-5, rtol=1e-5)


def test_shared_qk_with_one_bucket_is_shared_qk_full_attention():
    attention = mechanism(num_hashes=1, num_buckets=1, lsh_chunk_length=32, shared_qk=True)
    q, _, v = qkv()
    keys = shared_qk_keys(q)
    not_self = ~torch.eye(19, dtype=torch.bool)
    torch.testing.assert_close(attention(q, q, v), dense_reference_attention(q, keys, v, not_self),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_padding_invariance(padding):
    attention = mechanism()
    q, k, v = qkv()
    mask = padding_mask(2, 19, padding)
    batched = attention(q, k, v, padding_mask=mask)
    real = mask[1]
    alone = attention(q[1:, :, real], k[1:, :, real], v[1:, :, real])
    torch.testing.assert_close(batched[1][:, real], alone[0], atol=1e-5, rtol=1e-5)
    assert batched[1][:, ~real].abs().max() == 0


def test_eval_is_deterministic_and_survives_a_state_dict_round_trip():
    attention = mechanism(hash_seed=7)
    q, k, v = qkv()
    first = attention(q, k, v)
    assert torch.equal(first, attention(q, k, v))
    generator = torch.Generator().manual_seed(7)  # the rotations Transformers' Reformer draws with hash_seed=7
    assert torch.equal(attention.rotations, torch.randn(attention.rotations.shape, generator=generator))
    again = mechanism(hash_seed=0)
    again.load_state_dict(attention.state_dict())
    assert torch.equal(again(q, k, v), first)
    again.reset_parameters()  # meta-device init re-creates the buffer from its own seed
    assert not torch.equal(again.rotations, attention.rotations)


def test_training_redraws_the_rotations_reproducibly_without_reseeding_torch():
    attention = mechanism().train()
    q, k, v = qkv()
    torch.manual_seed(11)
    first = attention(q, k, v)
    second = attention(q, k, v)
    assert not torch.equal(first, second), "a training forward must draw new rotations"
    torch.manual_seed(11)
    assert torch.equal(attention(q, k, v), first), "set_seed must reproduce the rotations"
    assert torch.initial_seed() == 11, "the mechanism must not reseed torch's global generator"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype):
    attention = mechanism()
    q, k, v = qkv()
    out = attention.to(dtype)(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), attention.float()(q, k, v), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("field, value", [
    ("num_buckets", 3), ("num_buckets", [2, 3]), ("num_buckets", 0), ("num_buckets", [2, 2, 2]),
    ("num_hashes", 0), ("lsh_chunk_length", 0), ("lsh_num_chunks_before", -1), ("shared_qk", "yes"),
    ("lsh_attention_pattern", "trax"),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EffzooReformerConfig(**TINY, **{field: value})


def test_default_bucket_count_follows_the_length_and_chunk():
    assert EffzooReformerConfig(max_position_embeddings=512, lsh_chunk_length=64).bucket_count == 16
    assert EffzooReformerConfig(max_position_embeddings=512, num_buckets=[4, 8]).bucket_count == 32


@pytest.mark.parametrize("shared_qk", [False, True])
def test_decoding_with_a_cache_equals_the_causal_forward_when_the_chunk_covers_the_input(shared_qk):
    from transformers import DynamicCache

    attention = mechanism(shared_qk=shared_qk, lsh_chunk_length=32)
    q, k, v = qkv()
    mask = padding_mask(2, 19, "left")
    parallel = attention(q, k, v, padding_mask=mask, causal=True)
    cache = DynamicCache()
    steps = [attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], padding_mask=mask[:, :7], causal=True, cache=cache)]
    for position in range(7, 19):
        step = slice(position, position + 1)
        steps.append(attention(q[:, :, step], k[:, :, step], v[:, :, step], padding_mask=mask[:, : position + 1],
                               causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, atol=1e-5, rtol=1e-5)


def test_shared_qk_keys_are_the_queries_scaled_to_length_root_d():
    q, _, _ = qkv()
    expected = q / q.norm(dim=-1, keepdim=True) * q.shape[-1] ** 0.5
    torch.testing.assert_close(shared_qk_keys(q), expected, atol=1e-5, rtol=1e-5)


def reformer_code_weights(attention: LSHAttention, q, k, mask, causal) -> torch.Tensor:
    """(batch, heads, L, L) multiplicities of Reformer's code: how many cyclic chunk windows over the
    concatenated rounds give query i key j, from the definition, with Python sorting."""
    batch, heads, length, _ = q.shape
    query_buckets, key_buckets = attention.buckets(q, k)
    if key_buckets is None:
        key_buckets = query_buckets
    real = mask if mask is not None else torch.ones(batch, length, dtype=torch.bool)
    per_chunk = attention.chunk_length if attention.shared_qk else 2 * attention.chunk_length
    items = length if attention.shared_qk else 2 * length
    per_round = -(-items // per_chunk) * per_chunk
    total_chunks = attention.num_hashes * per_round // per_chunk
    counts = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            chunk_queries, chunk_keys = {}, {}
            for r in range(attention.num_hashes):
                qb, kb = query_buckets[r, b, h].tolist(), key_buckets[r, b, h].tolist()
                padded = attention.bucket_count
                if attention.shared_qk:
                    order = sorted((qb[p] if real[b, p] else padded, p, 0, p) for p in range(length))
                    order = [(p, True, True) for *_, p in order]
                else:
                    order = sorted([(kb[p] if real[b, p] else padded, p, 0) for p in range(length)]
                                   + [(qb[p] if real[b, p] else padded, p, 1) for p in range(length)])
                    order = [(p, kind == 1, kind == 0) for _, p, kind in order]
                for slot, (p, is_query, is_key) in enumerate(order):
                    chunk = (r * per_round + slot) // per_chunk
                    if real[b, p] and is_query:
                        chunk_queries.setdefault(chunk, []).append(p)
                    if real[b, p] and is_key:
                        chunk_keys.setdefault(chunk, []).append(p)
            for chunk, queries in chunk_queries.items():
                window = [(chunk + shift) % total_chunks
                          for shift in range(-attention.chunks_before, attention.chunks_after + 1)]
                for i in queries:
                    for j in (j for c in window for j in chunk_keys.get(c, [])):
                        if not (causal and j > i) and not (attention.shared_qk and i == j):
                            counts[b, h, i, j] += 1
    rows = torch.arange(length)
    alone = (counts.sum(-1) == 0) & real[:, None, :]
    counts[:, :, rows, rows] += alone.double()
    return counts


@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "right"])
def test_reformer_code_pattern_equals_its_weighted_reference(shared_qk, causal, padding):
    attention = mechanism(shared_qk=shared_qk, lsh_attention_pattern="chunks", lsh_num_chunks_after=0)
    q, k, v = qkv()
    mask = padding_mask(2, 19, padding)
    keys = shared_qk_keys(q) if shared_qk else k
    counts = reformer_code_weights(attention, q, keys, mask, causal)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), keys.double()) / 8**0.5
    scores = (scores + counts.log()).masked_fill(counts == 0, float("-inf"))
    expected = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1).nan_to_num(0.0), v.double()).float()
    torch.testing.assert_close(attention(q, k, v, padding_mask=mask, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_reformer_code_pattern_runs_plain_attention_on_an_input_of_one_chunk():
    attention = mechanism(shared_qk=True, lsh_attention_pattern="chunks", lsh_chunk_length=19)
    q, _, v = qkv()
    not_self = ~torch.eye(19, dtype=torch.bool)
    torch.testing.assert_close(attention(q, q, v, causal=False),
                               dense_reference_attention(q, shared_qk_keys(q), v, not_self), atol=1e-5, rtol=1e-5)


def assert_gradients_close(got, want, **tolerance) -> None:
    """Gradients equal where the expected one exists; where it does not (k in shared-QK), none or zero."""
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None or not g.abs().max() > 0
            continue
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **tolerance)


@pytest.mark.parametrize("pattern", ["buckets", "chunks"])
@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_explicit_scores_of_the_dropout_path_equal_the_fused_kernel(pattern, shared_qk, causal, monkeypatch):
    """Training with dropout forms the scores explicitly; with nothing dropped it computes what the kernel does."""
    attention = mechanism(shared_qk=shared_qk, lsh_attention_pattern=pattern)
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, 19, "right")
    fused = attention(q, k, v, padding_mask=mask, causal=causal)
    fused_grads = torch.autograd.grad(fused.square().sum(), (q, k, v), allow_unused=True)
    monkeypatch.setattr(attention, "attention_dropout", lambda x: 1e-300)  # the explicit path, evaluation: no drop
    explicit = attention(q, k, v, padding_mask=mask, causal=causal)
    explicit_grads = torch.autograd.grad(explicit.square().sum(), (q, k, v), allow_unused=True)
    torch.testing.assert_close(explicit, fused, atol=1e-10, rtol=1e-10)
    assert_gradients_close(explicit_grads, fused_grads, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_reformer_code_pattern_gradients_equal_its_weighted_reference(shared_qk, causal):
    attention = mechanism(shared_qk=shared_qk, lsh_attention_pattern="chunks", lsh_num_chunks_after=0)
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, 19, "right")
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    keys = shared_qk_keys(q) if shared_qk else k
    counts = reformer_code_weights(attention, q.detach(), keys.detach(), mask, causal)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, keys) / 8**0.5
    scores = (scores + counts.log()).masked_fill(counts == 0, float("-inf"))
    expected = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1).nan_to_num(0.0), v)
    expected = expected * mask[:, None, :, None]
    got = torch.autograd.grad(out.square().sum(), (q, k, v), allow_unused=True)
    want = torch.autograd.grad(expected.square().sum(), (q, k, v), allow_unused=True)
    assert_gradients_close(got, want, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("shared_qk", [False, True])
def test_causal_gradients_equal_the_reference(shared_qk):
    attention = mechanism(shared_qk=shared_qk)
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, 19, "left")
    out = attention(q, k, v, padding_mask=mask, causal=True)
    keys = shared_qk_keys(q) if shared_qk else k
    allowed = reference_pattern(attention, q.detach(), keys.detach(), mask, True)
    expected = dense_reference_attention(q, keys, v, allowed)
    got = torch.autograd.grad(out.square().sum(), (q, k, v), allow_unused=True)
    want = torch.autograd.grad(expected.square().sum(), (q, k, v), allow_unused=True)
    assert_gradients_close(got, want, atol=1e-8, rtol=1e-6)




@pytest.mark.parametrize("shared_qk", [False, True], ids=["separate-qk", "shared-qk"])
def test_memory_grows_linearly(shared_qk):
    """With a fixed chunk and bucket count the largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_hashes=2, num_buckets=16, lsh_chunk_length=64, lsh_num_chunks_after=0,
                          shared_qk=shared_qk).train()
    assert_memory_grows_linearly(attention, heads=2)