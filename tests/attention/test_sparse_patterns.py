"""Every sparse pattern against exact attention under the same pattern as an explicit boolean mask.

The reference patterns are written here from the papers' definitions, on the positions of the
real tokens, independently of the engine's block layouts; only BigBird's random draw is read from
the mechanism (its choice is tested on its own).
"""

from __future__ import annotations

import math

import pytest
import torch

from effzoo import AxialConfig, EffzooBigBirdConfig, EffzooLongformerConfig, LocalConfig, SparseConfig
from effzoo.attention import FullAttention, dense_reference_attention
from effzoo.attention.axial import AxialAttention
from effzoo.attention.kv_cache import SinkSlidingWindowLayer
from effzoo.attention.local import LocalAttention
from effzoo.attention.ops import block_attention, chunked_flash, chunking
from effzoo.attention.random_blocks import RandomBlocksAttention
from effzoo.attention.sliding_window import SlidingWindowAttention
from effzoo.attention.strided import StridedAttention
from tests.attention.memory import assert_memory_grows_linearly

HEADS, HEAD_DIM, HIDDEN = 4, 8, 32


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is ~20x faster than two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: The config class of each mechanism: it holds the defaults and checks the fields.
CONFIG_CLASSES = {
    LocalAttention: LocalConfig,
    SlidingWindowAttention: EffzooLongformerConfig,
    RandomBlocksAttention: EffzooBigBirdConfig,
    StridedAttention: SparseConfig,
    AxialAttention: AxialConfig,
}


def make_config(mechanism_class, **fields):
    """A tiny config of the mechanism's variant; ``dense_attention_below=0`` takes the block-sparse
    path at every length, ``flex_attention_from=None`` never compiles."""
    base = {"attention_probs_dropout_prob": 0.0, "num_hidden_layers": 2, "num_attention_heads": HEADS}
    base.update(hidden_size=HIDDEN, max_position_embeddings=64, dense_attention_below=0, flex_attention_from=None)
    return CONFIG_CLASSES[mechanism_class](**{**base, **fields})


# ---------------------------------------------------------------------------------------------
# Reference patterns: (heads, n, n) bool on the positions 0..n-1 of a sequence's n real tokens
# ---------------------------------------------------------------------------------------------


def grid(n):
    positions = torch.arange(n)
    return positions[:, None], positions[None, :]


def per_head(first, second, split=True):
    """First half of the heads on ``first``, the rest on ``second`` (split), or the union on all."""
    if not split:
        return (first | second).expand(HEADS, -1, -1)
    half = (HEADS + 1) // 2
    return torch.stack([first] * half + [second] * (HEADS - half))


def local_reference(block_size, before, after):
    def pattern(n, causal):
        i, j = grid(n)
        offset = j // block_size - i // block_size
        return ((offset >= -before) & (offset <= (0 if causal else after))).expand(HEADS, -1, -1)

    return pattern


def window_reference(attention_window, dilation):
    dilations = dilation if isinstance(dilation, list) else [dilation] * HEADS

    def pattern(n, causal):
        i, j = grid(n)
        return torch.stack([((i - j).abs() <= d * attention_window // 2) & ((i - j) % d == 0) for d in dilations])

    return pattern


def strided_reference(sparse_pattern, stride, summary_size=0, sparse_heads="split"):
    def pattern(n, causal):
        i, j = grid(n)
        if sparse_pattern == "strided":
            first, second = (i - j).abs() < stride, (i - j) % stride == 0
        else:
            first, second = i // stride == j // stride, (j % stride >= stride - summary_size).expand(n, n)
        return per_head(first, second, sparse_heads == "split")

    return pattern


def axial_reference(columns, split=True):
    def pattern(n, causal):
        i, j = grid(n)
        return per_head(i // columns == j // columns, (i - j) % columns == 0, split)

    return pattern


def bigbird_reference(mechanism, block_size):
    """Window of 3 blocks + the mechanism's random blocks; the end blocks are global (bigbird_globals)."""

    def pattern(n, causal):
        num_blocks = max(1, math.ceil(n / block_size))
        random = mechanism.random_blocks(num_blocks, torch.tensor([n]), HEADS)[:, 0]  # (heads, blocks, r)
        i, j = grid(n)
        query_block, key_block = i // block_size, j // block_size
        chosen = (random[:, query_block] == key_block[..., None]).any(-1)
        return ((query_block - key_block).abs() <= 1) | chosen

    return pattern


def bigbird_globals(block_size):
    def extra(n):
        block = torch.arange(n) // block_size
        return (block == 0) | (block == (n - 1) // block_size)

    return extra


def reference_allowed(pattern, lengths, length, padding, causal, special=True, user_global=None, extra_global=None):
    """(batch, heads, L, L) pattern in tensor positions, and (batch, L) global tokens."""
    allowed = torch.zeros(len(lengths), HEADS, length, length, dtype=torch.bool)
    global_rows = torch.zeros(len(lengths), length, dtype=torch.bool)
    for row, n in enumerate(lengths):
        if n == 0:
            continue
        index = torch.arange(n) if padding != "left" else torch.arange(length - n, length)
        mask = pattern(n, causal).clone()
        is_global = torch.zeros(n, dtype=torch.bool)
        if special:
            is_global[0] = True
            is_global[n - 1] |= not causal
        if user_global is not None:
            is_global |= user_global[row, index]
        if extra_global is not None:
            is_global |= extra_global(n)
        mask |= is_global[None, None, :]
        if not causal:
            mask |= is_global[None, :, None]
        if causal:
            mask &= torch.ones(n, n, dtype=torch.bool).tril()
        allowed[row][:, index[:, None], index[None, :]] = mask
        if not causal:
            global_rows[row, index] = is_global
    return allowed, global_rows


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

LOCAL = {"block_size": 4, "num_blocks_before": 1, "num_blocks_after": 2}
LOCAL_WIDE = {"block_size": 8, "num_blocks_before": 2, "num_blocks_after": 0}
DILATED = {"attention_window": [4, 10], "attention_dilation": [1, 2, 2, 3]}
STRIDED = {"sparse_pattern": "strided", "stride": 5, "sparse_heads": "split"}
STRIDED_MERGED = {"sparse_pattern": "strided", "stride": 4, "sparse_heads": "merged"}
FIXED = {"sparse_pattern": "fixed", "stride": 6, "summary_size": 2, "sparse_heads": "split"}
FIXED_MERGED = {"sparse_pattern": "fixed", "stride": 4, "summary_size": 1, "sparse_heads": "merged"}

#: name -> (mechanism class, config fields, reference pattern factory given the mechanism)
CASES = {
    "local": (LocalAttention, LOCAL, lambda m: local_reference(4, 1, 2)),
    "local-wide": (LocalAttention, LOCAL_WIDE, lambda m: local_reference(8, 2, 0)),
    "longformer": (SlidingWindowAttention, {"attention_window": 6}, lambda m: window_reference(6, 1)),
    "longformer-dilated": (SlidingWindowAttention, DILATED, lambda m: window_reference(4, [1, 2, 2, 3])),
    "bigbird": (RandomBlocksAttention, {"block_size": 4, "num_random_blocks": 2}, lambda m: bigbird_reference(m, 4)),
    "strided": (StridedAttention, STRIDED, lambda m: strided_reference("strided", 5)),
    "strided-merged": (StridedAttention, STRIDED_MERGED, lambda m: strided_reference("strided", 4, 0, "merged")),
    "fixed": (StridedAttention, FIXED, lambda m: strided_reference("fixed", 6, 2)),
    "fixed-merged": (StridedAttention, FIXED_MERGED, lambda m: strided_reference("fixed", 4, 1, "merged")),
    "axial": (AxialAttention, {"axial_shape": (8, 6)}, lambda m: axial_reference(6)),
    "axial-merged": (AxialAttention, {"axial_shape": (8, 6), "axial_heads": "merged"}, lambda m: axial_reference(6, False)),
}
CAUSAL_CASES = [name for name, (cls, _, _) in CASES.items() if cls.supports_causal]
LENGTHS = [37, 26, 0]  # a sequence with no real token at all, too


def build(name, **overrides):
    mechanism_class, fields, reference = CASES[name]
    mechanism = mechanism_class(make_config(mechanism_class, **{**fields, **overrides})).eval()
    extra_global = bigbird_globals(fields["block_size"]) if mechanism_class is RandomBlocksAttention else None
    return mechanism, reference(mechanism), extra_global


def qkv(batch=3, length=37):
    return [torch.randn(batch, HEADS, length, HEAD_DIM) for _ in range(3)]


def padding_mask(lengths, length, padding):
    """Real tokens first ("right" padding), last ("left") or around a gap in the middle ("middle")."""
    positions = torch.arange(length)[None, :]
    lengths = torch.tensor(lengths)[:, None]
    if padding == "right":
        return positions < lengths
    if padding == "left":
        return positions >= length - lengths
    return (positions < lengths // 2) | (positions >= length - (lengths - lengths // 2))


def hidden_inputs(mechanism, batch, length):
    """Longformer's hidden states and the global q, k, v its projections make of them."""
    if not isinstance(mechanism, SlidingWindowAttention):
        return {}, None
    hidden_states = torch.randn(batch, length, HIDDEN)
    projections = (mechanism.query_global, mechanism.key_global, mechanism.value_global)
    per_head = [p(hidden_states).view(batch, length, HEADS, HEAD_DIM).transpose(1, 2) for p in projections]
    return {"hidden_states": hidden_states}, per_head


def expected_output(q, k, v, allowed, global_rows, global_qkv, padding):
    expected = dense_reference_attention(q, k, v, allowed)
    if global_qkv is None:
        return expected
    real = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool) if padding is None else padding
    rows = dense_reference_attention(*global_qkv, real[:, None, None, :])
    return torch.where(global_rows[:, None, :, None], rows, expected)


# ---------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True], ids=["blocks", "dense"])
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_pattern_equals_dense_reference(name, causal, padding, dense):
    if causal and name not in CAUSAL_CASES:
        pytest.skip("bidirectional only")
    mechanism, reference, extra_global = build(name, dense_attention_below=10**6 if dense else 0)
    length = 37
    lengths = LENGTHS if padding else [length] * 3
    q, k, v = qkv()
    mask = padding_mask(lengths, length, padding) if padding else None
    extra, global_qkv = hidden_inputs(mechanism, 3, length)
    out = mechanism(q, k, v, padding_mask=mask, causal=causal, **extra)
    allowed, global_rows = reference_allowed(reference, lengths, length, padding, causal, extra_global=extra_global)
    expected = expected_output(q, k, v, allowed, global_rows, global_qkv, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "chunk_rows, pieces",
    [(None, 1), (1, 1), (2, 1), (7, 1), (1, 2), (1, 3)],
    ids=["one-chunk", "rows-1", "rows-2", "rows-7", "rows-1-in-2-pieces", "rows-1-in-3-pieces"],
)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_equal_dense_reference(name, causal, chunk_rows, pieces, monkeypatch):
    """Also with the fused path cut into chunks of (head, batch row) pairs: one pair each, two
    (a head at a time, batch rows split unevenly) and seven (two whole heads at a time); and with
    each part of a one-pair chunk attended in 2 or 3 pieces of query blocks."""
    if causal and name not in CAUSAL_CASES:
        pytest.skip("bidirectional only")
    if chunk_rows is not None:
        monkeypatch.setattr(
            chunked_flash,
            "chunk_plan",
            lambda q, parts, batch: (chunking.chunk_slices(q.shape[0], q.shape[1], chunk_rows), pieces),
        )
    mechanism, reference, extra_global = build(name)
    lengths = [37, 26, 0]
    q, k, v = [x.requires_grad_() for x in qkv()]
    mask = padding_mask(lengths, 37, "left")
    extra, global_qkv = hidden_inputs(mechanism, 3, 37)
    weights = torch.randn(3, HEADS, 37, HEAD_DIM)
    out = mechanism(q, k, v, padding_mask=mask, causal=causal, **extra)
    allowed, global_rows = reference_allowed(reference, lengths, 37, "left", causal, extra_global=extra_global)
    expected = expected_output(q, k, v, allowed, global_rows, global_qkv, mask)
    gradients = torch.autograd.grad((out * weights).sum(), (q, k, v))
    reference_gradients = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for gradient, reference_gradient in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, reference_gradient, atol=1e-5, rtol=1e-5)


def test_chunks_cover_every_head_and_batch_row_once_within_the_budget():
    for heads, batch_size in [(4, 3), (12, 1), (1, 5)]:
        for rows in range(1, heads * batch_size + 2):
            covered = torch.zeros(heads, batch_size, dtype=torch.int)
            for head_slice, row_slice in chunking.chunk_slices(heads, batch_size, rows):
                covered[head_slice, row_slice] += 1
                assert covered[head_slice, row_slice].numel() <= rows
            assert (covered == 1).all(), (heads, batch_size, rows)


@pytest.mark.parametrize("num_blocks, pieces", [(7, 1), (7, 2), (7, 3), (2, 3), (256, 3)])
def test_pieces_cover_every_query_block_once(num_blocks, pieces):
    covered = torch.zeros(num_blocks, dtype=torch.int)
    for blocks in chunking.piece_slices(num_blocks, pieces):
        assert blocks is None or blocks.stop > blocks.start
        covered[slice(None) if blocks is None else blocks] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("padding", [None, "left"])
@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("local-")])
def test_user_global_tokens(name, padding):
    mechanism, reference, extra_global = build(name, global_special_tokens=False)
    length = 37
    lengths = LENGTHS if padding else [length] * 3
    q, k, v = qkv()
    mask = padding_mask(lengths, length, padding) if padding else None
    global_attention_mask = torch.zeros(3, length, dtype=torch.long)
    global_attention_mask[:, [3, 20, 30]] = 1
    extra, global_qkv = hidden_inputs(mechanism, 3, length)
    out = mechanism(q, k, v, padding_mask=mask, global_attention_mask=global_attention_mask, **extra)
    allowed, global_rows = reference_allowed(
        reference, lengths, length, padding, False, special=False,
        user_global=global_attention_mask.bool(), extra_global=extra_global,
    )
    expected = expected_output(q, k, v, allowed, global_rows, global_qkv, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_longformer_global_projections_fold_exactly_with_gradients():
    """Global rows read key_global / value_global folded into their queries and outputs: the same
    values and gradients (hidden states, the three global projections) as projecting every token."""
    mechanism, reference, _ = build("longformer")
    mechanism.train()  # dropout is 0 in the test config; training mode takes the same path
    lengths = [37, 26, 0]
    q, k, v = qkv()
    mask = padding_mask(lengths, 37, "left")
    hidden_states = torch.randn(3, 37, HIDDEN, requires_grad=True)
    projections = (mechanism.query_global, mechanism.key_global, mechanism.value_global)
    parameters = [hidden_states] + [p for projection in projections for p in projection.parameters()]
    weights = torch.randn(3, HEADS, 37, HEAD_DIM)

    out = mechanism(q, k, v, padding_mask=mask, hidden_states=hidden_states)
    per_head = [p(hidden_states).view(3, 37, HEADS, HEAD_DIM).transpose(1, 2) for p in projections]
    allowed, global_rows = reference_allowed(reference, lengths, 37, "left", False)
    expected = expected_output(q, k, v, allowed, global_rows, per_head, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    gradients = torch.autograd.grad((out * weights).sum(), parameters)
    reference_gradients = torch.autograd.grad((expected * weights).sum(), parameters)
    for gradient, reference_gradient in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, reference_gradient, atol=1e-5, rtol=1e-5)


def test_longformer_equals_transformers_longformer_self_attention():
    """With special tokens off, the window, the global tokens and their projections are Transformers'."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    batch, length = 2, 32  # Transformers needs a multiple of the window
    fields = {"attention_window": [8], "num_hidden_layers": 1, "num_attention_heads": HEADS, "hidden_size": HIDDEN}
    theirs = LongformerSelfAttention(LongformerConfig(**fields, attention_probs_dropout_prob=0.0), layer_id=0).eval()
    ours = SlidingWindowAttention(make_config(SlidingWindowAttention, **fields, global_special_tokens=False)).eval()
    for name in ("query_global", "key_global", "value_global"):
        getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())
    hidden_states = torch.randn(batch, length, HIDDEN)
    mask = padding_mask([32, 25], length, "right")
    global_attention_mask = torch.zeros(batch, length, dtype=torch.long)
    global_attention_mask[:, [0, 7]] = 1
    global_attention_mask[1, 20] = 1
    # Transformers' encoding of the merged mask: -10000 padding, 0 local, +10000 global.
    merged = torch.where(~mask, -10000.0, torch.where(global_attention_mask.bool(), 10000.0, 0.0))
    expected = theirs(hidden_states, merged, is_index_masked=merged < 0, is_index_global_attn=merged > 0,
                      is_global_attn=True)[0]

    def per_head(x):
        return x.view(batch, length, HEADS, HEAD_DIM).transpose(1, 2)

    q, k, v = (per_head(projection(hidden_states)) for projection in (theirs.query, theirs.key, theirs.value))
    out = ours(q, k, v, padding_mask=mask, global_attention_mask=global_attention_mask, hidden_states=hidden_states)
    out = out.transpose(1, 2).reshape(batch, length, -1)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=1e-5)


COVERING = {
    "local": (LocalAttention, {"block_size": 8, "num_blocks_before": 5, "num_blocks_after": 5}),
    "longformer": (SlidingWindowAttention, {"attention_window": 80}),
    "bigbird": (RandomBlocksAttention, {"block_size": 8, "num_random_blocks": 5}),
    "strided-merged": (StridedAttention, {"sparse_pattern": "strided", "stride": 40, "sparse_heads": "merged"}),
    "fixed-merged": (StridedAttention, {**FIXED_MERGED, "stride": 40}),
}


@pytest.mark.parametrize("dense", [False, True], ids=["blocks", "dense"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(COVERING))
def test_covering_layout_equals_full(name, causal, dense):
    mechanism_class, fields = COVERING[name]
    if causal and not mechanism_class.supports_causal:
        pytest.skip("bidirectional only")
    config = make_config(
        mechanism_class, **fields, global_special_tokens=False, dense_attention_below=10**6 if dense else 0
    )
    mechanism = mechanism_class(config).eval()
    q, k, v = qkv()
    mask = padding_mask(LENGTHS, 37, "right")
    expected = FullAttention(config).eval()(q, k, v, padding_mask=mask, causal=causal)
    torch.testing.assert_close(mechanism(q, k, v, padding_mask=mask, causal=causal), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["right", "left", "middle"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_padding_invariance(name, causal, padding):
    """A sequence alone and inside a padded batch: same outputs for its real tokens, zeros for padding."""
    if causal and name not in CAUSAL_CASES:
        pytest.skip("bidirectional only")
    mechanism, _, _ = build(name)
    length, lengths = 45, [45, 29, 17]
    q, k, v = qkv(length=length)
    extra, _ = hidden_inputs(mechanism, 3, length)
    mask = padding_mask(lengths, length, padding)
    batched = mechanism(q, k, v, padding_mask=mask, causal=causal, **extra)
    for row in range(len(lengths)):
        real = mask[row]
        alone_inputs = [x[row : row + 1, :, real] for x in (q, k, v)]
        alone_extra = {key: value[row : row + 1, real] for key, value in extra.items()}
        alone = mechanism(*alone_inputs, causal=causal, **alone_extra)
        torch.testing.assert_close(batched[row : row + 1, :, real], alone, atol=1e-5, rtol=1e-5)
        assert (batched[row, :, ~real] == 0).all()


@pytest.mark.parametrize("name", ["longformer", "strided-merged", "bigbird"])
def test_training_with_dropout_has_finite_gradients(name):
    mechanism, _, _ = build(name, attention_probs_dropout_prob=0.3)
    q, k, v = [x.requires_grad_() for x in qkv()]
    extra, _ = hidden_inputs(mechanism, 3, 37)
    out = mechanism.train()(q, k, v, padding_mask=padding_mask(LENGTHS, 37, "left"), **extra)
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


# ---------------------------------------------------------------------------------------------
# BigBird's random blocks
# ---------------------------------------------------------------------------------------------


def test_random_blocks_are_fixed_in_eval_and_redrawn_in_training():
    mechanism, _, _ = build("bigbird")
    lengths = torch.tensor([400])
    eval_blocks = mechanism.random_blocks(100, lengths, HEADS)
    assert torch.equal(eval_blocks, mechanism.random_blocks(100, lengths, HEADS))
    assert eval_blocks[:, 0, 2:-2].unique().numel() > 50  # spread over the sequence, not one block

    mechanism.train()
    torch.manual_seed(3)
    first = mechanism.random_blocks(100, lengths, HEADS)
    second = mechanism.random_blocks(100, lengths, HEADS)
    torch.manual_seed(3)
    assert not torch.equal(first, second) and torch.equal(first, mechanism.random_blocks(100, lengths, HEADS))


def test_random_blocks_avoid_window_global_and_padding_blocks():
    mechanism, _, _ = build("bigbird", num_random_blocks=3)
    blocks = mechanism.random_blocks(30, torch.tensor([120, 50, 10]), HEADS)  # 30, 13 and 3 real blocks
    query_block = torch.arange(30)[None, None, :, None]
    last_real = torch.tensor([29, 12, 2])[None, :, None, None]
    chosen = blocks >= 0
    assert ((blocks - query_block).abs() > 1)[chosen].all()  # not in the window
    assert ((blocks >= 1) & (blocks < last_real)).expand_as(blocks)[chosen].all()  # real, not global
    ordered = blocks.sort(-1).values
    assert not ((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)).any()  # distinct
    assert (chosen[:, 0].sum(-1) == 3).all()  # enough candidates: always num_random_blocks


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [None, "left"])
@pytest.mark.parametrize("name", CAUSAL_CASES)
def test_decoding_with_cache_equals_causal_forward(name, padding):
    mechanism, _, _ = build(name)
    mechanism.layer_idx = 1
    length = 31
    q, k, v = qkv(batch=2, length=length)
    mask = padding_mask([31, 18], length, padding) if padding else None
    expected = mechanism(q, k, v, padding_mask=mask, causal=True)

    cache = type(mechanism).new_cache(make_config(type(mechanism), **CASES[name][1]))
    steps = [(0, 7), (7, 9)] + [(t, t + 1) for t in range(9, length)]  # a prefill, a 2-token chunk, then one by one
    outputs = []
    for start, end in steps:
        step_mask = None if mask is None else mask[:, :end]
        step = [x[:, :, start:end] for x in (q, k, v)]
        outputs.append(mechanism(*step, padding_mask=step_mask, causal=True, cache=cache))
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, atol=1e-5, rtol=1e-5)

    window = type(mechanism).cache_window(make_config(type(mechanism), **CASES[name][1]), 1)
    if window is not None:  # the sliding-window variants keep only the window (and the sink)
        layer = cache.layers[1]
        assert isinstance(layer, SinkSlidingWindowLayer) and layer.keys.shape[2] == window
        assert window < length


# ---------------------------------------------------------------------------------------------
# Memory: the largest single allocation of a forward + backward grows linearly with L
# ---------------------------------------------------------------------------------------------

MEMORY_CASES = {
    "local": (LocalAttention, {"block_size": 128, "num_blocks_before": 1, "num_blocks_after": 1}),
    "longformer": (SlidingWindowAttention, {"attention_window": 256, "attention_dilation": [1, 2]}),
    "bigbird": (RandomBlocksAttention, {"block_size": 64, "num_random_blocks": 3}),
    "strided": (StridedAttention, {"sparse_pattern": "strided", "stride": 128, "sparse_heads": "split"}),
    "strided-merged": (StridedAttention, {"sparse_pattern": "strided", "stride": 128, "sparse_heads": "merged"}),
    "fixed-merged": (StridedAttention, {**FIXED_MERGED, "stride": 256, "summary_size": 2}),
    "axial": (AxialAttention, {"axial_shape": (64, 128)}),
    "axial-merged": (AxialAttention, {"axial_shape": (64, 128), "axial_heads": "merged"}),
}




@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_memory_grows_linearly(name):
    mechanism_class, fields = MEMORY_CASES[name]
    config = make_config(mechanism_class, **fields, num_attention_heads=2, hidden_size=16)
    mechanism = mechanism_class(config)
    hidden_states = isinstance(mechanism, SlidingWindowAttention)  # its global projections read the layer input
    assert_memory_grows_linearly(mechanism, heads=2, inputs=(lambda length: {"hidden_states": torch.randn(1, length, 16)})
                                 if hidden_states else None)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mechanism_class, fields, argument",
    [
        (LocalAttention, {"block_size": 0}, "block_size"),
        (LocalAttention, {"block_size": 2.5}, "block_size"),
        (LocalAttention, {"num_blocks_before": -1}, "num_blocks_before"),
        (SlidingWindowAttention, {"attention_window": 7}, "attention_window must be even"),
        (SlidingWindowAttention, {"attention_window": -2}, "attention_window"),
        (SlidingWindowAttention, {"attention_window": [4, 4, 4]}, "attention_window has 3 entries"),
        (SlidingWindowAttention, {"attention_dilation": [1, 2]}, "attention_dilation has 2 entries"),
        (SlidingWindowAttention, {"attention_dilation": 0}, "attention_dilation"),
        (RandomBlocksAttention, {"block_size": -4}, "block_size"),
        (RandomBlocksAttention, {"num_random_blocks": -1}, "num_random_blocks"),
        (RandomBlocksAttention, {"is_decoder": True}, "is_decoder"),
        (StridedAttention, {"stride": 0}, "stride"),
        (StridedAttention, {"sparse_pattern": "diagonal"}, "sparse_pattern"),
        (StridedAttention, {"sparse_heads": "some"}, "sparse_heads"),
        (StridedAttention, {"sparse_pattern": "fixed", "stride": 4, "summary_size": 5}, "summary_size"),
        (StridedAttention, {"sparse_heads": "split", "num_attention_heads": 1}, "sparse_heads='split'"),
        (AxialAttention, {"axial_shape": (4, 0)}, "axial_shape"),
        (AxialAttention, {"axial_shape": 8}, "axial_shape"),
        (AxialAttention, {"num_attention_heads": 1}, "num_attention_heads"),
        (AxialAttention, {"axial_heads": "rows"}, "axial_heads"),
        (LocalAttention, {"dense_attention_below": -1}, "dense_attention_below"),
    ],
)
def test_bad_config_raises(mechanism_class, fields, argument):
    with pytest.raises(ValueError, match=argument):
        mechanism_class(make_config(mechanism_class, **fields))


def test_axial_shape_smaller_than_the_sequence_raises():
    mechanism = AxialAttention(make_config(AxialAttention, axial_shape=(4, 8)))
    with pytest.raises(ValueError, match=r"axial_shape \(4, 8\) holds 32 tokens but the input has 37"):
        mechanism(*qkv())


def test_bigbird_causal_call_raises():
    with pytest.raises(ValueError, match="causal=True"):
        RandomBlocksAttention(make_config(RandomBlocksAttention))(*qkv(), causal=True)


@pytest.mark.parametrize("name", ["local", "longformer", "bigbird"])
def test_global_attention_mask_of_wrong_shape_raises(name):
    mechanism, _, _ = build(name, global_special_tokens=False)
    with pytest.raises(ValueError, match="global_attention_mask has shape"):
        mechanism(*qkv(), global_attention_mask=torch.ones(3, 36, dtype=torch.long))


def test_causal_global_attention_mask_raises():
    mechanism, _, _ = build("local")
    with pytest.raises(ValueError, match="global_attention_mask cannot be used with causal"):
        mechanism(*qkv(), causal=True, global_attention_mask=torch.ones(3, 37, dtype=torch.long))


def test_longformer_without_hidden_states_raises():
    mechanism, _, _ = build("longformer")
    with pytest.raises(ValueError, match="hidden_states"):
        mechanism(*qkv())


@pytest.mark.parametrize("config_name", ["LocalConfig", "EffzooLongformerConfig", "EffzooBigBirdConfig", "SparseConfig"])
def test_windowed_patterns_run_short_inputs_dense_and_long_ones_in_blocks(config_name, monkeypatch):
    """Below 1,024 padded tokens their blocks would gather more keys than the input has."""
    import effzoo
    from effzoo.variants import get_variant

    config = getattr(effzoo, config_name)(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=1,
                                          max_position_embeddings=1024, block_size=32, attention_window=64,
                                          stride=32)
    mechanism = get_variant(config.model_type.removeprefix("effzoo-")).model_classes["AutoModel"](config)
    mechanism = mechanism.encoder.layer[0].attention.self.mechanism
    calls = []
    original = block_attention._attend_group_dense
    monkeypatch.setattr(block_attention, "_attend_group_dense", lambda *a: calls.append(1) or original(*a))
    hidden_states = torch.randn(1, 1024, HIDDEN)
    for length in (900, 1024):
        q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM) for _ in range(3))
        extra = {"hidden_states": hidden_states[:, :length]} if config_name == "EffzooLongformerConfig" else {}
        mechanism(q, k, v, **extra)
    assert len(calls) == 1  # 900 tokens (padded to 928) dense, 1,024 in blocks


@pytest.mark.parametrize("name", list(CASES))
def test_context_is_laid_out_for_merging_heads_without_a_copy(name):
    """The fused CPU path writes (batch, L, heads, dim) in memory, so the layer's
    ``transpose(1, 2).reshape(batch, L, hidden)`` is a view (at 16K a copy is a fresh 50 MB tensor)."""
    mechanism, _, _ = build(name)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for x in qkv(batch=1, length=37))
    extra, _ = hidden_inputs(mechanism, 1, 37)
    context = mechanism(q, k, v, padding_mask=None, causal=False, **extra)
    assert context.shape == q.shape
    assert context.transpose(1, 2).is_contiguous()
