"""Kernel (linear) attention: φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1) in O(L·m·d), never an L×L tensor.

One mechanism for the Performer (FAVOR+, Choromanski et al. 2021), the Linear Transformer
(Katharopoulos et al. 2020) and Hedgehog (Zhang et al. 2024); the feature map is the only
difference (:mod:`.feature_maps`). Values are extended with a column of ones, [v, 1], so the
normaliser φ(q)·Σφ(k) rides along with the numerator in the same matrix products.

- Bidirectional: S = φ(K)ᵀ[V, 1] (m × (d+1) per head), then φ(Q)S (eq. 4–6 of Katharopoulos).
- Causal, chunked: exact within a chunk (a chunk × chunk lower-triangular kernel matrix) plus
  the state of all earlier chunks, S_<c = Σ_{c'<c} φ(K_c')ᵀ[V_c', 1], from one batched product
  and a prefix sum over chunks (the chunk form of eq. 8–9, as in fla's ``chunk`` kernels).
- Decoding: :class:`KernelAttentionCache` keeps S (and the FAVOR+ key stabiliser) per layer, so
  each new token costs O(m·d).
- Hybrid (``hybrid_window``, ``hybrid_special_tokens``; Hedgehog only, bidirectional): exact
  softmax weights on a window of neighbouring blocks and on the first and last real token, kernel
  weights beyond, one normaliser (LoLCATs, Zhang et al. 2024, eq. 6, with its block-wise
  "terraced" window): O(L·(m + window)·d).

The slow, obviously correct reference is the explicit kernel matrix φ(Q)φ(K)ᵀ, masked and
row-normalised (the tests build it). Attention-probability dropout has no linear-time
equivalent: ``attention_probs_dropout_prob`` is accepted and not applied.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, LinearAttentionLayer

from .base import AttentionMechanism
from .feature_maps import (
    EluFeatures,
    FavorReluFeatures,
    FavorSoftmaxFeatures,
    FeatureMap,
    HedgehogFeatures,
    upcast,
)
from .masking import (
    gather_positions,
    query_padding_mask,
    real_tokens_first_order,
    scatter_positions,
    zero_padded_queries,
)


class KernelStateLayer(LinearAttentionLayer):
    """One layer's decoding state: S = Σ φ(k)[v, 1]ᵀ (batch, heads, m, d+1) and the key log-scale.

    ``recurrent_states[0]`` is S (float32), ``recurrent_states[1]`` the (batch, heads, 1, 1)
    log-scale of FAVOR+ softmax keys (S is stored divided by exp(log_scale); unused by the other
    kernels); ``tokens_seen`` counts positions, padded ones included, so position ids continue.
    """

    is_compileable = False  # a Python token count; also keeps generate() from building 4D masks

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(number_of_states=2)
        self.tokens_seen = 0
        self.feature_version: int | None = None

    def read(self, feature_version: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(S, log_scale) of the tokens seen so far, or (None, None) before the first update."""
        if not self.has_previous_state[0]:
            return None, None
        if feature_version != self.feature_version:
            raise RuntimeError(
                "The random features of this attention layer were redrawn while a KernelAttentionCache "
                "was in use; the cached state no longer matches. Start a new cache after a redraw "
                "(or set feature_redraw_interval=None for generation)."
            )
        log_scale = self.recurrent_states[1] if self.has_previous_state[1] else None
        return self.recurrent_states[0], log_scale

    def write(self, state: torch.Tensor, log_scale: torch.Tensor | None, new_tokens: int, feature_version: int) -> None:
        """Store the updated state after ``new_tokens`` more positions.

        The new tensors replace the old ones (no in-place copy), so a graph that used the old
        state stays valid; ``is_compileable`` is False anyway, so no static address is needed.
        """
        self.device, self.dtype, self.batch_size = state.device, state.dtype, state.shape[0]
        for index, tensor in enumerate((state, log_scale)):
            if tensor is not None:
                self.recurrent_states[index] = tensor
                self.is_recurrent_states_initialized[index] = True
                self.has_previous_state[index] = True
        self.tokens_seen += new_tokens
        self.feature_version = feature_version

    def get_seq_length(self) -> int:
        return self.tokens_seen

    def reset(self) -> None:
        super().reset()
        self.tokens_seen = 0
        self.feature_version = None

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda state: state.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda state: state[indices])

    def _map_batch(self, fn) -> None:
        for index, state in self.recurrent_states.items():
            if state is not None:
                self.recurrent_states[index] = fn(state)
                self.batch_size = self.recurrent_states[index].shape[0]


class KernelAttentionCache(Cache):
    """A ``transformers.Cache`` of :class:`KernelStateLayer`: O(m·d) per layer, whatever the length.

    ``get_seq_length()`` returns the positions seen (padding included), so position ids continue.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(layers=[KernelStateLayer() for _ in range(config.num_hidden_layers)])

    def state_layer(self, layer_idx: int) -> KernelStateLayer:
        """The state of layer ``layer_idx`` (created on first use)."""
        while len(self.layers) <= layer_idx:
            self.layers.append(KernelStateLayer())
        return self.layers[layer_idx]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        raise TypeError(
            "KernelAttentionCache keeps a recurrent state, not keys and values: pass it to "
            "KernelAttention(cache=...) instead of calling update()."
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].tokens_seen if layer_idx < len(self.layers) else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0


def _rescale(
    state: torch.Tensor | None,
    state_log_scale: torch.Tensor | None,
    phi_k: torch.Tensor,
    key_log_scale: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Bring the cached state and the new key features to one stabiliser, max of the two.

    The online-softmax rescaling (Milakov & Gimelshein 2018) applied to FAVOR+'s shared key
    stabiliser: exact, since both are scaled by a common factor. A -inf log-scale means "no real
    key yet" and contributes zero.
    """
    if key_log_scale is None or state is None:
        return state, phi_k, key_log_scale
    log_scale = torch.maximum(state_log_scale, key_log_scale)
    shift = torch.where(torch.isfinite(log_scale), log_scale, torch.zeros_like(log_scale))
    return state * torch.exp(state_log_scale - shift), phi_k * torch.exp(key_log_scale - shift), log_scale


class _DivideByLastColumn(torch.autograd.Function):
    """[n, z] ↦ n / max(z, tiny) for (batch, heads, L, d + 1), whose gradient is written into one
    new [n, z]-shaped tensor.

    Autograd's slice-and-divide fills two zero tensors of the input's shape in the backward,
    copies each slice's gradient in and adds them: four passes over (L × (d+1)) where one will do.
    Only the input is saved; the quotient is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        batch, heads, length, width = out.shape
        # (batch, L, heads, dim) in memory: the layer merges the heads of that layout without a copy.
        return _divide_by_clamped_last_column(out, into=out.new_empty(batch, length, heads, width - 1).transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula instead
            with torch.enable_grad():
                return torch.autograd.grad(_divide_by_clamped_last_column(out), out, grad, create_graph=True)[0]
        normaliser = out[..., -1:]
        clamped = normaliser.clamp_min(torch.finfo(out.dtype).tiny)
        grad_out = torch.empty_like(out)
        torch.div(grad, clamped, out=grad_out[..., :-1])
        # d(n/z)/dz = −n/z² = −Σ grad·n / z²; zero where the clamp was active (as clamp_min's gradient).
        grad_normaliser = (grad * out[..., :-1]).sum(dim=-1, keepdim=True).div_(clamped).div_(clamped).neg_()
        grad_out[..., -1:] = grad_normaliser.masked_fill_(normaliser != clamped, 0.0)
        return grad_out


def _divide_by_clamped_last_column(out: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """The plain formula, written into ``into`` when given (autograd differentiates it, without
    ``into``, under ``create_graph``)."""
    return torch.div(out[..., :-1], out[..., -1:].clamp_min(torch.finfo(out.dtype).tiny), out=into)


def divide_by_last_column(out: torch.Tensor) -> torch.Tensor:
    """out[..., :-1] / out[..., -1:], the normaliser clamped to the smallest positive float so that
    a row with no real key gives zeros, not NaN: the values and gradients of autograd's."""
    return _DivideByLastColumn.apply(out)


def causal_linear_attention(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_{j≤i} (φ(q_i)·φ(k_j)) values_j for every i, and the final state S = Σ_j φ(k_j) values_jᵀ.

    Chunked (Katharopoulos et al. 2020, eq. 8–9 in chunk form): a chunk × chunk lower-triangular
    kernel matrix inside each chunk, plus the prefix sum of per-chunk states for the chunks before
    it (and ``initial_state``, the cached past). The per-chunk states come from one batched
    product; memory O(L·(m + d + chunk) + (L/chunk)·m·d), no L×L and no per-position state.
    """
    batch, heads, length, m = phi_q.shape
    width = values.shape[-1]
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:
        phi_q, phi_k, values = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, values))
    q = phi_q.view(batch, heads, num_chunks, chunk, m)
    k = phi_k.view(batch, heads, num_chunks, chunk, m)
    v = values.view(batch, heads, num_chunks, chunk, width)

    within = (q @ k.transpose(-1, -2)).tril_() @ v
    # Prefix sums of the chunk states, one (m × width) add per chunk: on CPU this beats
    # cumsum(dim=2), whose kernel is slow along a non-innermost axis and whose backward flips.
    state = initial_state if initial_state is not None else v.new_zeros(batch, heads, m, width)
    earlier = []
    for chunk_state in (k.transpose(-1, -2) @ v).unbind(dim=2):
        earlier.append(state)
        state = state + chunk_state
    out = within + q @ torch.stack(earlier, dim=2)
    return out.view(batch, heads, num_chunks * chunk, width)[:, :, :length], state


def softmax_correction(
    q: torch.Tensor,
    k: torch.Tensor,
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    values: torch.Tensor,
    key_mask: torch.Tensor | None,
    window: int | None,
    special_tokens: bool = False,
) -> torch.Tensor:
    """Σ_{j∈E(i)} (exp(q_i·k_j/√d − c_i) − φ(q_i)·φ(k_j)) values_j: added to linear attention's
    φ(Q)S, it gives the keys in E(i) softmax weights instead of kernel ones.

    E(i) is the query's block of ``window`` positions and the blocks on each side (LoLCATs'
    block-wise window), and with ``special_tokens`` also the first and last real token (the
    attention sinks a converted BERT leans on: [CLS] and the final [SEP]). c_i, the row's largest
    score in E(i), keeps exp ≤ 1, and the kernel weights beyond keep their scale (LoLCATs, eq. 6).
    ``phi_k`` and ``values`` are already zero on padded keys; ``key_mask`` (batch, L) is True on
    real ones. Blocks count real tokens only (a padded batch is reordered real tokens first), so
    padding never moves a window. Memory O(L · (3·window + 2)).
    """
    if key_mask is None:
        return _packed_softmax_correction(q, k, phi_q, phi_k, values, None, window, special_tokens)
    order = real_tokens_first_order(key_mask)
    q, k, phi_q, phi_k, values = (gather_positions(x, order) for x in (q, k, phi_q, phi_k, values))
    packed = _packed_softmax_correction(
        q, k, phi_q, phi_k, values, key_mask.gather(1, order), window, special_tokens
    )
    return scatter_positions(packed, order)


def _packed_softmax_correction(q, k, phi_q, phi_k, values, key_mask, window, special_tokens) -> torch.Tensor:
    """:func:`softmax_correction` of a batch whose real tokens come first."""
    batch, heads, length, head_dim = q.shape
    scale = head_dim**-0.5
    row_maxima = []
    if window is not None:
        num_blocks = -(-length // window)
        pad = num_blocks * window - length

        def blocks(x: torch.Tensor) -> torch.Tensor:
            """(batch, heads, L, dim) -> (batch, heads, blocks, window, dim)."""
            return F.pad(x, (0, 0, 0, pad)).view(*x.shape[:2], num_blocks, window, x.shape[-1])

        def neighbours(x: torch.Tensor) -> torch.Tensor:
            """(batch, heads, L, dim) -> (batch, heads, blocks, 3·window, dim): blocks b − 1, b, b + 1."""
            return F.pad(x, (0, 0, window, window + pad)).unfold(2, 3 * window, window).transpose(-1, -2)

        real = q.new_ones(batch, length) if key_mask is None else key_mask.to(q.dtype)
        real = neighbours(real[:, None, :, None])[..., 0][:, :, :, None, :] > 0  # (batch, 1, blocks, 1, 3·window)
        window_scores = (blocks(q) @ neighbours(k).transpose(-1, -2) * scale).masked_fill(~real, float("-inf"))
        row_maxima.append(window_scores.amax(dim=-1, keepdim=True).flatten(2, 3)[:, :, :length])
    if special_tokens:
        lengths = torch.full((batch,), length, device=q.device) if key_mask is None else key_mask.sum(-1)
        special = torch.stack([torch.zeros_like(lengths), (lengths - 1).clamp_min(0)], dim=-1)  # (batch, 2)
        outside = torch.stack([lengths > 0, lengths > 1], dim=-1)[:, None, None, :]  # the last: another token
        if window is not None:  # not already in the window
            query_block = torch.arange(length, device=q.device) // window
            outside = outside & ((query_block[:, None] - special[:, None, None, :] // window).abs() > 1)
        special_k, special_phi_k, special_values = (gather_positions(x, special) for x in (k, phi_k, values))
        special_scores = (q @ special_k.transpose(-1, -2) * scale).masked_fill(~outside, float("-inf"))
        row_maxima.append(special_scores.amax(dim=-1, keepdim=True))
    # Not a cancelling constant (the kernel weights are not scaled by it): part of the function, with its gradient.
    stabiliser = torch.stack(row_maxima).amax(dim=0) if len(row_maxima) > 1 else row_maxima[0]
    stabiliser = torch.where(torch.isfinite(stabiliser), stabiliser, torch.zeros_like(stabiliser))
    out = 0
    if window is not None:
        block_stabiliser = F.pad(stabiliser, (0, 0, 0, pad)).view(batch, heads, num_blocks, window, 1)
        weights = torch.exp(window_scores - block_stabiliser) - blocks(phi_q) @ neighbours(phi_k).transpose(-1, -2)
        out = (weights @ neighbours(values)).reshape(batch, heads, num_blocks * window, -1)[:, :, :length]
    if special_tokens:
        kernel = phi_q @ special_phi_k.transpose(-1, -2)
        weights = torch.where(outside, torch.exp(special_scores - stabiliser) - kernel, 0.0)
        out = out + weights @ special_values
    return out


def feature_map_of(config: Any) -> FeatureMap:
    """The feature map φ that ``config.kernel`` names, sized from the config's fields."""
    head_dim = config.head_dim
    if config.kernel in ("softmax", "relu"):
        random_map = FavorSoftmaxFeatures if config.kernel == "softmax" else FavorReluFeatures
        return random_map(
            head_dim, config.num_random_features, config.orthogonal_features, config.feature_redraw_interval
        )
    if config.kernel == "elu":
        return EluFeatures(head_dim)
    return HedgehogFeatures(config.num_attention_heads, head_dim, config.hedgehog_feature_dim or head_dim)


class KernelAttention(AttentionMechanism):
    """softmax(QKᵀ/√d)V ≈ φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1), bidirectional or causal, with a recurrent cache.

    Config (``PerformerConfig``, ``LinearConfig`` or ``HedgehogConfig``, which hold the defaults
    and checks): ``kernel`` ("softmax" and "relu": FAVOR+ random features, Performer, with
    ``num_random_features``, ``orthogonal_features`` and ``feature_redraw_interval``; "elu":
    elu + 1, Linear Transformer; "hedgehog": learnable softmax features, with
    ``hedgehog_feature_dim``) and ``causal_chunk_size`` (the chunk length of the causal form, exact
    at any value). Hedgehog's ``hybrid_window`` and ``hybrid_special_tokens`` (bidirectional only)
    give a window of neighbouring blocks and the first and last real token softmax weights, kernel
    weights beyond (:func:`softmax_correction`).

    Padded keys leave both numerator and normaliser (zero φ(K) rows); padded queries give zero
    context; all sums are float32 (float64 inputs stay float64).
    """

    supports_causal = True
    no_attention_weights_reason = (
        "kernel attention computes φ(Q)(φ(K)ᵀV) and never forms the softmax weights. To inspect the kernel, "
        "take q and k from forward hooks on a layer's attention.self.query and .key projections (split into "
        "heads) and form mechanism.feature_map(q) @ mechanism.feature_map(k).T, normalised by its row sums, on a "
        "short input."
    )
    #: What conversion from BERT gives each kernel's own parameters (the report names only the model's).
    CONVERSION_INIT = {
        "softmax": "FAVOR+ positive random features: a fresh random projection (a buffer, not a parameter)",
        "relu": "FAVOR+ ReLU random features: a fresh random projection (a buffer, not a parameter)",
        "elu": "none: the elu + 1 feature map has no parameters",
        "hedgehog": "Hedgehog feature map: the identity (W = I, b = 0), trained by effzoo distill",
    }

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.kernel = config.kernel
        self.causal_chunk_size = config.causal_chunk_size
        hedgehog = self.kernel == "hedgehog"  # the hybrid fields are HedgehogConfig's alone
        self.hybrid_window = config.hybrid_window if hedgehog else None
        self.hybrid_special_tokens = config.hybrid_special_tokens if hedgehog else False
        self.hybrid = self.hybrid_window is not None or self.hybrid_special_tokens
        if self.hybrid and config.is_decoder:
            raise ValueError(
                "hybrid_window and hybrid_special_tokens are bidirectional only: is_decoder=True (a causal model) "
                "is not supported with them. Set hybrid_window=None and hybrid_special_tokens=False for a causal "
                "Hedgehog LM."
            )
        self.conversion_init = self.CONVERSION_INIT[self.kernel]
        self.feature_map = feature_map_of(config)

    @classmethod
    def new_cache(cls, config: Any) -> KernelAttentionCache:
        return KernelAttentionCache(config)

    def reset_parameters(self) -> None:
        """Initialise the feature map's parameters/buffers not loaded from a checkpoint."""
        self.feature_map.reset_parameters()

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
        layer = None
        if cache is not None:
            if not isinstance(cache, KernelAttentionCache):
                raise TypeError(
                    f"KernelAttention needs a KernelAttentionCache, got {type(cache).__name__}; "
                    "create it with KernelAttention.new_cache(config)."
                )
            layer = cache.state_layer(self.layer_idx)
        elif self.training:
            self.feature_map.count_training_call()  # never while a cache holds states of these features
        if causal and self.hybrid:
            raise ValueError(
                "hybrid_window and hybrid_special_tokens are bidirectional only; got causal=True. "
                "Set hybrid_window=None and hybrid_special_tokens=False."
            )
        past = layer.tokens_seen if layer is not None else 0
        if padding_mask is not None and padding_mask.shape[-1] != past + k.shape[-2]:
            raise ValueError(
                f"padding_mask has length {padding_mask.shape[-1]} but there are {past} cached and "
                f"{k.shape[-2]} new positions; pass a (batch, {past + k.shape[-2]}) mask covering both."
            )
        new_mask = query_padding_mask(padding_mask, k.shape[-2])

        dtype = q.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
            # One float32 copy of each input: the gradients of its several uses add up in float32
            # and are rounded to a half dtype once, not once per use.
            q, k, v = upcast(q), upcast(k), upcast(v)
            phi_q = self.feature_map(q, is_query=True)
            phi_k, key_log_scale = self.feature_map.keys_with_log_scale(k, new_mask)
            values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # [v, 1]: numerator and normaliser
            if new_mask is not None:
                real = new_mask[:, None, :, None]
                phi_k = phi_k.masked_fill(~real, 0.0)
                values = values.masked_fill(~real, 0.0)

            state = state_log_scale = None
            if layer is not None:
                state, state_log_scale = layer.read(self.feature_map.version)
            state, phi_k, log_scale = _rescale(state, state_log_scale, phi_k, key_log_scale)

            if causal:
                out, new_state = causal_linear_attention(phi_q, phi_k, values, self.causal_chunk_size, state)
            else:
                # (Vᵀφ(K))ᵀ, not φ(K)ᵀV: the same state, but φ(K)'s gradient comes out contiguous
                # (V·Gᵀ, L × m) instead of transposed, which saved an L × m copy in the backward.
                new_state = (values.transpose(-1, -2) @ phi_k).transpose(-1, -2)
                if state is not None:
                    new_state = new_state + state
                out = phi_q @ new_state
                if self.hybrid:
                    out = out + softmax_correction(
                        q, k, phi_q, phi_k, values, new_mask, self.hybrid_window,
                        self.hybrid_special_tokens,
                    )
            if layer is not None:
                layer.write(new_state, log_scale, k.shape[-2], self.feature_map.version)

            context = divide_by_last_column(out)
        return zero_padded_queries(context.to(dtype), padding_mask)
