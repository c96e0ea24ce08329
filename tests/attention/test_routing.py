"""Routing attention against exact softmax attention under its own pattern, written from the definition.

The reference takes the mechanism's centroids, sorts each row's real tokens by their cosine with
every centroid in Python, lets each cluster take its window of nearest queries and keys, and allows
query i to see key j where some cluster took both (causal: j ≤ i; shared-QK: not its own key unless
nothing else); a real query that sees nothing sees itself. Exact attention under that mask
(``dense_reference_attention``) is what the mechanism must return.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.utils.checkpoint import checkpoint

import effzoo
from effzoo.attention.full import FullAttention
from effzoo.attention.local import LocalAttention
from effzoo.attention.lsh import shared_qk_keys
from effzoo.attention.reference import dense_reference_attention
from effzoo.attention.routing import RoutingAttention
from effzoo.configs.routing import RoutingConfig
from tests.attention.inputs import LENGTH, padding_mask, qkv
from tests.attention.memory import assert_memory_grows_linearly

TINY = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8,
            max_position_embeddings=64, attention_probs_dropout_prob=0.0)


def mechanism(**fields) -> RoutingAttention:
    fields = {**TINY, "num_clusters": 3, "num_local_heads": 0, **fields}
    return RoutingAttention(RoutingConfig(**fields)).eval()


def taken_by(vectors: torch.Tensor, centroid: torch.Tensor, positions: list[int], window: int) -> list[int]:
    """The ``window`` positions whose unit vectors are nearest to ``centroid``, by Python sorting."""
    return sorted(positions, key=lambda p: -float(vectors[p] @ centroid))[:window]


def reference_pattern(attention: RoutingAttention, q, k, mask, causal) -> torch.Tensor:
    """(batch, heads, L, L) allowed pairs, from the definition."""
    batch, heads, length, _ = q.shape
    real = mask if mask is not None else torch.ones(batch, length, dtype=torch.bool)
    query_vectors, key_vectors = F.normalize(q.double(), dim=-1), F.normalize(k.double(), dim=-1)
    centroids = attention.centroids.double()
    allowed = torch.zeros(batch, heads, length, length, dtype=torch.bool)
    for b in range(batch):
        positions = [p for p in range(length) if real[b, p]]
        window = min(attention.cluster_window or math.ceil(len(positions) / attention.num_clusters), len(positions))
        for h in range(heads):
            for c in range(attention.num_clusters):
                queries = taken_by(query_vectors[b, h], centroids[h, c], positions, window)
                keys = taken_by(key_vectors[b, h], centroids[h, c], positions, window)
                for i in queries:
                    for j in keys:
                        if not (causal and j > i) and not (attention.shared_qk and i == j):
                            allowed[b, h, i, j] = True
    rows = torch.arange(length)
    alone = ~allowed.any(-1) & real[:, None, :]
    allowed[:, :, rows, rows] |= alone
    return allowed


def reference_output(attention: RoutingAttention, q, k, v, mask, causal) -> torch.Tensor:
    keys = shared_qk_keys(q) if attention.shared_qk else k
    return dense_reference_attention(q, keys, v, reference_pattern(attention, q, keys, mask, causal))


SETTINGS = [(False, False), (True, False), (True, True)]  # (shared_qk, causal): causal needs shared queries and keys


@pytest.mark.parametrize("shared_qk, causal", SETTINGS)
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("cluster_window", [None, 2, 5])
def test_routing_equals_exact_attention_under_its_pattern(shared_qk, causal, padding, cluster_window, device):
    attention = mechanism(shared_qk=shared_qk, cluster_window=cluster_window).to(device)
    q, k, v = (x.to(device) for x in qkv())
    mask = padding_mask(2, LENGTH, padding)
    out = attention(q, k, v, padding_mask=None if mask is None else mask.to(device), causal=causal)
    expected = reference_output(attention.cpu(), q.cpu(), k.cpu(), v.cpu(), mask, causal)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_the_default_window_takes_some_tokens_in_several_clusters_and_some_in_none():
    """⌈19 / 3⌉ = 7 tokens per cluster: 21 slots over 19 tokens, so some are taken twice (their keys counted
    once) and, here, some never (they attend themselves): both cases of the test above."""
    attention = mechanism()
    q, k, _ = qkv()
    clusters = attention.clusters(q, k)
    taken = clusters.query_taken.expand_as(clusters.query_index).flatten(2).float()
    counts = torch.zeros(2, 2, LENGTH).scatter_add_(-1, clusters.query_index.flatten(2), taken)
    assert bool((counts >= 2).any()) and bool((counts == 0).any())


@pytest.mark.parametrize("shared_qk, causal", SETTINGS)
def test_gradients_equal_the_reference(shared_qk, causal):
    attention = mechanism(shared_qk=shared_qk).double()
    q, k, v = (x.double().requires_grad_() for x in qkv())
    mask = padding_mask(2, LENGTH, "right")
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v), allow_unused=True)
    keys = shared_qk_keys(q) if shared_qk else k
    allowed = reference_pattern(attention, q.detach(), keys.detach(), mask, causal)
    expected = dense_reference_attention(q, keys, v, allowed)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v), allow_unused=True)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None or not got.abs().max() > 0
            continue
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_one_cluster_with_a_covering_window_equals_full_attention(causal):
    attention = mechanism(num_clusters=1, cluster_window=32, shared_qk=causal)
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, "right")
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    if not causal:
        expected = FullAttention(RoutingConfig(**TINY)).eval()(q, k, v, padding_mask=mask)
    else:  # shared-QK causal attention: keys are the scaled queries, a token's own key only when alone
        keys = shared_qk_keys(q)
        rows = torch.arange(LENGTH)
        allowed = (rows[None, :] < rows[:, None]) & mask[:, None, None, :]
        allowed = allowed | (~allowed.any(-1, keepdim=True) & torch.eye(LENGTH, dtype=torch.bool))
        expected = dense_reference_attention(q, keys, v, allowed & mask[:, None, :, None])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("shared_qk, causal", SETTINGS)
def test_padding_invariance(padding, shared_qk, causal):
    attention = mechanism(shared_qk=shared_qk, num_local_heads=1, local_window=4)
    q, k, v = qkv()
    mask = padding_mask(2, LENGTH, padding)
    batched = attention(q, k, v, padding_mask=mask, causal=causal)
    real = mask[1]
    alone = attention(q[1:, :, real], k[1:, :, real], v[1:, :, real], causal=causal)
    torch.testing.assert_close(batched[1][:, real], alone[0], atol=1e-5, rtol=1e-5)
    assert batched[1][:, ~real].abs().max() == 0


def test_padded_tokens_are_never_taken():
    attention = mechanism(cluster_window=12)  # more than the 9 real tokens of the second row
    q, k, _ = qkv()
    mask = padding_mask(2, LENGTH, "left")
    mask[1] = torch.arange(LENGTH) >= 10
    clusters = attention.clusters(q, k, mask)
    for index, taken in ((clusters.query_index, clusters.query_taken), (clusters.key_index, clusters.key_taken)):
        taken = taken.expand_as(index)
        assert bool(mask[1][index[1][taken[1]]].all()), "a padded token was taken"
        assert int(taken[1].sum(-1).max()) == 9 and int(taken[0].sum(-1).min()) == 12


def test_the_centroid_update_by_hand():
    """One head, two clusters on the plane; two real queries and keys and one padded token far away."""
    attention = mechanism(num_attention_heads=1, hidden_size=2, num_clusters=2, centroid_decay=0.5).train()
    with torch.no_grad():
        attention.centroids.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    q = torch.tensor([[[[2.0, 0.2], [0.1, 3.0], [-5.0, -5.0]]]])  # (1, 1, 3, 2): the last one padded
    k = torch.tensor([[[[1.0, -0.2], [0.3, 1.0], [-5.0, -5.0]]]])
    mask = torch.tensor([[True, True, False]])
    attention(q, k, q, padding_mask=mask)
    attention.update_centroids()

    def unit(x: list[float]) -> torch.Tensor:
        return F.normalize(torch.tensor(x), dim=-1)

    # The vectors nearest (1, 0) are query 0 and key 0; those nearest (0, 1) query 1 and key 1.
    first = F.normalize(unit([2.0, 0.2]) + unit([1.0, -0.2]), dim=-1)
    second = F.normalize(unit([0.1, 3.0]) + unit([0.3, 1.0]), dim=-1)
    expected = torch.stack([F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * first, dim=-1),
                            F.normalize(0.5 * torch.tensor([0.0, 1.0]) + 0.5 * second, dim=-1)])
    torch.testing.assert_close(attention.centroids[0], expected)


def test_a_centroid_that_no_token_chose_keeps_its_place():
    attention = mechanism(num_attention_heads=1, hidden_size=2, num_clusters=2).train()
    with torch.no_grad():
        attention.centroids.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    x = torch.tensor([[[[2.0, 0.5], [1.0, -0.5]]]])
    attention(x, x, x)
    attention.eval()  # leaving training applies the kept statistics
    assert torch.equal(attention.centroids[0, 1], torch.tensor([0.0, 1.0]))
    assert not torch.equal(attention.centroids[0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(attention.centroids.norm(dim=-1), torch.ones(1, 2))


def test_centroids_move_in_training_and_not_in_eval():
    attention = mechanism()
    start = attention.centroids.clone()
    q, k, v = qkv()
    first = attention(q, k, v)
    assert torch.equal(first, attention(q, k, v)), "two eval forwards differ"
    assert torch.equal(attention.centroids, start), "eval moved the centroids"
    attention.train()
    attention(q, k, v)
    assert torch.equal(attention.centroids, start), "a step's update waits for the next step"
    attention(q, k, v)
    moved = attention.centroids.clone()
    assert not torch.equal(moved, start), "training did not move the centroids"
    torch.testing.assert_close(moved.norm(dim=-1), torch.ones(2, 3))
    attention.eval()
    assert not torch.equal(attention.centroids, moved), "leaving training applies the last step's update"


def test_recomputation_inside_the_backward_sees_the_clusters_of_the_forward():
    """Gradient checkpointing re-runs the forward inside the backward: it must route as the forward did,
    and gather nothing, so that the gradients are those of the plain step and the update happens once."""
    plain, checkpointed = mechanism(cluster_window=4).train(), mechanism(cluster_window=4).train()
    centroids = F.normalize(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    for attention in (plain, checkpointed):
        attention.centroids.copy_(centroids)
    q, k, v = (x.requires_grad_() for x in qkv())

    def gradients(attention: RoutingAttention, run) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(run(attention).square().sum(), (q, k, v))

    def step(attention: RoutingAttention) -> torch.Tensor:
        return attention(q, k, v)

    expected = gradients(plain, step)
    got = gradients(checkpointed, lambda attention: checkpoint(step, attention, use_reentrant=False))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    plain.update_centroids()
    checkpointed.update_centroids()
    torch.testing.assert_close(checkpointed.centroids, plain.centroids)


def test_eval_is_deterministic_and_save_load_gives_identical_outputs(tmp_path):
    config = RoutingConfig(**{**TINY, "vocab_size": 99, "num_attention_heads": 4, "num_hidden_layers": 2},
                           num_clusters=3, num_local_heads=2, local_window=4, routing_seed=5)
    torch.manual_seed(0)
    model = effzoo.RoutingForMaskedLM(config).eval()
    input_ids = torch.randint(5, 99, (2, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        first = model(input_ids, attention_mask=mask).logits
        assert torch.equal(first, model(input_ids, attention_mask=mask).logits)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    mechanism_of = reloaded.bert.encoder.layer[1].attention.self.mechanism
    assert torch.equal(mechanism_of.centroids, model.bert.encoder.layer[1].attention.self.mechanism.centroids)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, first)


def test_centroids_are_drawn_from_the_routing_seed_and_restored_after_meta_init():
    attention = mechanism(routing_seed=7)
    drawn = torch.randn(attention.centroids.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(attention.centroids, F.normalize(drawn, dim=-1))
    config = RoutingConfig(**{**TINY, "vocab_size": 99}, num_clusters=3, routing_seed=7)
    with torch.device("meta"):
        model = effzoo.RoutingModel(config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.encoder.layer[0].attention.self.mechanism.centroids.fill_(float("nan"))
    model.init_weights()
    restored = model.encoder.layer[0].attention.self.mechanism.centroids  # one routing head beside one local
    one_head = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(restored, F.normalize(one_head, dim=-1))


@pytest.mark.parametrize("causal", [False, True])
def test_local_heads_equal_their_own_mechanism_on_their_slice(causal):
    attention = mechanism(num_attention_heads=4, hidden_size=32, num_local_heads=2, local_window=4, shared_qk=causal)
    q, k, v = qkv(heads=4)
    mask = padding_mask(2, LENGTH, "left")
    out = attention(q, k, v, padding_mask=mask, causal=causal)
    config = RoutingConfig(**{**TINY, "num_attention_heads": 4, "hidden_size": 32}, num_local_heads=2, local_window=4)
    local = LocalAttention(config.local_attention_config()).eval()
    torch.testing.assert_close(out[:, :2], local(q[:, :2], k[:, :2], v[:, :2], padding_mask=mask, causal=causal))
    routing_only = mechanism(num_attention_heads=2, num_local_heads=0, shared_qk=causal)
    routing_only.centroids.copy_(attention.centroids)
    torch.testing.assert_close(out[:, 2:], routing_only(q[:, 2:], k[:, 2:], v[:, 2:], padding_mask=mask,
                                                        causal=causal))


@pytest.mark.parametrize("field, value", [
    ("num_clusters", 0), ("num_clusters", 2.5), ("num_clusters", 65), ("cluster_window", 0),
    ("num_local_heads", -1), ("num_local_heads", 3), ("local_window", 0), ("centroid_decay", 0.0),
    ("centroid_decay", 1.0), ("routing_seed", "seven"), ("shared_qk", "yes"),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RoutingConfig(**TINY, **{field: value})


def test_a_causal_model_with_separate_queries_and_keys_is_refused():
    with pytest.raises(ValueError, match="Set shared_qk=True"):
        RoutingConfig(**TINY, is_decoder=True, shared_qk=False)
    with pytest.raises(ValueError, match="Set shared_qk=True"):
        effzoo.RoutingForCausalLM(RoutingConfig(**{**TINY, "vocab_size": 99}, shared_qk=False))
    with pytest.raises(ValueError, match="shared_qk=True"):
        mechanism(shared_qk=False)(*qkv(), causal=True)
    assert RoutingConfig(**TINY, is_decoder=True).uses_shared_qk() and not RoutingConfig(**TINY).uses_shared_qk()


def test_defaults_follow_the_configured_length():
    config = RoutingConfig(max_position_embeddings=512)
    assert config.cluster_count() == 23 and config.local_head_count() == 6 and config.routing_head_count == 6
    assert RoutingConfig(**TINY).cluster_count() == 8


def test_calibration_finds_the_clusters_of_the_sample():
    attention = mechanism(num_attention_heads=1, hidden_size=8, num_clusters=3)
    generator = torch.Generator().manual_seed(1)
    directions = F.normalize(torch.randn(3, 8, generator=generator), dim=-1)
    labels = torch.arange(60) % 3
    sample = directions[labels] + 0.05 * torch.randn(60, 8, generator=generator)
    attention.calibrate(sample[None, :30], sample[None, 30:], iterations=10)
    cosine = attention.centroids[0] @ directions.T
    assert bool((cosine.max(dim=0).values > 0.99).all()), cosine
    with pytest.raises(ValueError, match="queries must be"):
        attention.calibrate(sample[:30], sample[None, 30:])
    with pytest.raises(ValueError, match="iterations"):
        attention.calibrate(sample[None, :30], sample[None, 30:], iterations=0)


def test_calibrating_on_a_forward_uses_the_routing_heads_real_tokens_only():
    """calibrate_on takes the routing heads (after the local ones) and drops padded tokens: the same
    centroids as calibrate() on exactly those vectors; padding values cannot change them."""
    fields = dict(num_attention_heads=4, hidden_size=32, num_clusters=3, num_local_heads=2, shared_qk=False)
    attention = RoutingAttention(RoutingConfig(**{**TINY, **fields}), layer_idx=0)
    expected = RoutingAttention(RoutingConfig(**{**TINY, **fields}), layer_idx=0)
    q, k, _ = qkv(heads=4)
    mask = padding_mask(2, LENGTH, "right")
    attention.calibrate_on(q.masked_fill(~mask[:, None, :, None], 1e3), k, mask)
    expected.calibrate(q[:, 2:].transpose(0, 1)[:, mask], k[:, 2:].transpose(0, 1)[:, mask])
    torch.testing.assert_close(attention.centroids, expected.centroids, atol=0, rtol=0)
    shared = RoutingAttention(RoutingConfig(**{**TINY, **fields, "shared_qk": True}), layer_idx=0)
    alone = RoutingAttention(RoutingConfig(**{**TINY, **fields, "shared_qk": True}), layer_idx=0)
    shared.calibrate_on(q, k, mask)
    alone.calibrate(q[:, 2:].transpose(0, 1)[:, mask])
    torch.testing.assert_close(shared.centroids, alone.centroids, atol=0, rtol=0)


def test_decoding_with_a_cache_equals_the_causal_forward_in_the_one_cluster_limit():
    fields = dict(num_attention_heads=4, hidden_size=32, num_clusters=1, cluster_window=32, num_local_heads=2,
                  local_window=4, shared_qk=True)
    attention = RoutingAttention(RoutingConfig(**{**TINY, **fields}), layer_idx=0).eval()
    q, k, v = qkv(heads=4)
    mask = padding_mask(2, LENGTH, "left")
    parallel = attention(q, k, v, padding_mask=mask, causal=True)
    cache = RoutingAttention.new_cache(RoutingConfig(**{**TINY, **fields}))
    steps = [attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], padding_mask=mask[:, :7], causal=True, cache=cache)]
    for position in range(7, LENGTH):
        step = slice(position, position + 1)
        steps.append(attention(q[:, :, step], k[:, :, step], v[:, :, step], padding_mask=mask[:, : position + 1],
                               causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length(0) == LENGTH and len(cache.layers) == 2  # every key for routing, a window for local


def test_a_decoding_step_attends_the_window_its_nearest_centroid_takes():
    attention = mechanism(cluster_window=4, shared_qk=True)
    q, k, v = qkv(batch=1)
    cache = RoutingAttention.new_cache(RoutingConfig(**TINY, num_clusters=3, num_local_heads=0))
    attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], causal=True, cache=cache)
    out = attention(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], causal=True, cache=cache)
    keys = shared_qk_keys(q)
    units = F.normalize(q, dim=-1)
    allowed = torch.zeros(1, 2, 1, LENGTH, dtype=torch.bool)
    for h in range(2):
        nearest = int((attention.centroids[h] @ units[0, h, -1]).argmax())
        for j in taken_by(units[0, h], attention.centroids[h, nearest], list(range(LENGTH)), 4):
            allowed[0, h, 0, j] = j != LENGTH - 1
    allowed |= ~allowed.any(-1, keepdim=True) & (torch.arange(LENGTH) == LENGTH - 1)
    torch.testing.assert_close(out, dense_reference_attention(q[:, :, -1:], keys, v, allowed), atol=1e-5, rtol=1e-5)


def test_generate_runs_with_several_clusters():
    config = RoutingConfig(**{**TINY, "vocab_size": 99, "num_attention_heads": 4, "hidden_size": 32},
                           num_clusters=4, local_window=4)
    torch.manual_seed(0)
    model = effzoo.RoutingForCausalLM(config).eval()
    prompts = torch.randint(5, 99, (2, 12))
    mask = torch.ones_like(prompts)
    mask[1, :3] = 0
    generated = model.generate(prompts, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 18)


def test_the_scores_are_clusters_by_window_by_window():
    attention = mechanism(num_clusters=4, cluster_window=8)
    q, k, v = qkv(length=64)
    clusters = attention.clusters(q, k)
    assert clusters.query_index.shape == clusters.key_index.shape == (2, 2, 4, 8)
    contexts, log_normalisers = attention._attend_clusters(q, k, v, clusters, causal=False)
    assert contexts.shape == (2, 2, 4, 8, 8) and log_normalisers.shape == (2, 2, 4, 8)


def test_memory_grows_linearly():
    """With a fixed number of clusters and window the largest allocation of a forward + backward is linear in L."""
    attention = mechanism(num_attention_heads=4, hidden_size=32, num_clusters=16, cluster_window=128,
                          num_local_heads=2, local_window=128).train()
    assert_memory_grows_linearly(attention, heads=4, quadratic_share=0.5)  # two of the four heads route


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype):
    attention = mechanism(num_attention_heads=4, hidden_size=32, num_local_heads=2, local_window=4)
    q, k, v = qkv(heads=4)
    expected = attention(q, k, v)
    out = attention.to(dtype)(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
