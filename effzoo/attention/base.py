"""The mechanism contract every attention in the zoo implements (see DESIGN.md, "Contracts").

A mechanism turns projected queries, keys and values into context vectors. Everything around
it (projections, residuals, layer norms, heads) is the shared backbone, so a new attention is
one subclass of :class:`AttentionMechanism` and nothing else.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


class AttentionMechanism(nn.Module):
    """Base class of every mechanism: ``(q, k, v, padding_mask, causal, cache) -> context``.

    Shapes: ``q`` is (batch, heads, query_length, head_dim); ``k`` and ``v`` are
    (batch, heads, key_length, head_dim); ``padding_mask`` is a (batch, key_length) bool tensor,
    True for real tokens, covering the cached keys too when a cache is used. The result has the
    shape of ``q``. Rows of queries that can see no real key are zeros, never NaN.

    Subclasses set ``supports_causal`` and may own parameters and buffers; they never build an
    L×L tensor unless they are the exact reference. Extra inputs (a ``global_attention_mask``,
    say) are declared as further keyword arguments of ``forward``.

    With ``output_attentions=True`` a mechanism that has attention weights returns
    ``(context, weights)``: (batch, heads, query_length, key_length), dense where
    ``attention_weights_layout`` is ``"dense"``, a ``torch.sparse_coo_tensor`` holding only the
    attended (query, key) pairs where it is ``"sparse"``. A mechanism with none (the kernel
    family: the weights are never formed) leaves the layout ``None`` and says why in
    ``no_attention_weights_reason``; the backbone raises before any layer runs.
    """

    #: Whether ``forward(..., causal=True)`` is implemented (decides if ``ForCausalLM`` exists).
    supports_causal: bool = False
    #: How conversion from BERT initialises the mechanism's own parameters (shown in the report).
    conversion_init: str = "the mechanism's own initialisation"
    #: "dense", "sparse" or None: the layout of the weights ``forward(..., output_attentions=True)`` returns.
    attention_weights_layout: ClassVar[str | None] = None
    #: Why there are no attention weights, and what to inspect instead (the error's text).
    no_attention_weights_reason: ClassVar[str] = "this mechanism does not return attention weights."
    #: Whether the mechanism has state estimated from data (routing's centroids) that conversion sets by
    #: running sample text through the model: such a mechanism implements ``calibrate_on(q, k, padding_mask)``.
    calibrates: ClassVar[bool] = False
    #: What calibration sets and how (the conversion report's words).
    calibration_method: ClassVar[str] = ""
    #: Why a mechanism without ``supports_causal`` cannot be causal (the refusals' words).
    bidirectional_reason: ClassVar[str] = "it attends every position of the sequence"

    @classmethod
    def causal_refusal(cls, request: str, fix: str) -> ValueError:
        """The error for a causal ``request`` to a bidirectional mechanism, naming ``fix``."""
        return ValueError(f"{request}: {cls.__name__} is bidirectional only ({cls.bidirectional_reason}). {fix}, or use "
                          "a causal variant (full, local, linear, memory_compressed) for a causal model.")

    def refuse_causal(self, causal: bool) -> None:
        """Raise for ``causal=True`` where the mechanism cannot be causal."""
        if causal and not self.supports_causal:
            raise self.causal_refusal("causal=True", "Call with causal=False")

    @classmethod
    def check_can_return_weights(cls) -> None:
        """Raise a ``ValueError`` naming the mechanism when ``output_attentions=True`` cannot be honoured."""
        if cls.attention_weights_layout is None:
            raise ValueError(f"output_attentions=True: {cls.__name__} has no attention weights: "
                             f"{cls.no_attention_weights_reason} Call without output_attentions.")

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.dropout = config.attention_probs_dropout_prob

    def attention_dropout(self, x: torch.Tensor) -> float:
        """The attention-probability dropout to apply now: the config's in training, 0 in eval.

        On CPU, ``scaled_dot_product_attention`` has no fused kernel with dropout: it falls back to
        its math kernel, which stores the scores (L × L dense, L × keys per query in blocks), so a
        training run with dropout warns once.
        """
        if not self.training or not self.dropout:
            return 0.0
        if x.device.type == "cpu":
            logger.warning_once(
                f"attention_probs_dropout_prob={self.dropout} in training on CPU: scaled_dot_product_attention has "
                "no fused CPU kernel with dropout and falls back to its math kernel, which stores the attention "
                "scores (measured: longformer, batch 8 x 2,048 tokens, 15.6 GB in the forward). For long inputs "
                "set config.attention_probs_dropout_prob=0 (or convert with --set attention_probs_dropout_prob=0)."
            )
        return self.dropout

    def init_from_projections(self, query: nn.Linear, key: nn.Linear, value: nn.Linear) -> None:
        """Called by conversion once the BERT weights are in: a mechanism whose own parameters have
        a natural start in the layer's projections (Longformer's global ones) copies them here."""

    @classmethod
    def new_cache(cls, config: Any) -> Any:
        """The empty ``transformers.Cache`` that incremental decoding with this mechanism fills.

        Exact attention keeps every key and value (``DynamicCache``); a mechanism with a
        recurrent state or a window returns its own cache on the same interface.
        """
        from transformers import DynamicCache

        return DynamicCache(config=config)

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
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
