"""Config of the ``linformer`` variant: keys and values projected to k rows (Wang et al. 2020, Linformer)."""

from __future__ import annotations

from ..attention.linformer import LinformerAttention
from ..attention.checks import one_of, positive_int
from .compressed import CompressedConfig

#: The sharing modes implemented: per head (the paper's "none"), one per layer for all heads
#: ("headwise"), one per layer for keys and values of all heads ("key_value").
PROJECTION_SHARING = ("none", "headwise", "key_value")
PROJECTION_INITS = ("pooling", "gaussian")
#: k when ``projected_length`` is None: the paper's k at n = 512.
DEFAULT_PROJECTED_LENGTH = 128


class LinformerConfig(CompressedConfig):
    """Linformer: the real keys and values of a sequence are projected by learned (k × max_position_embeddings)
    matrices E and F (used on the actual length, any length up to the maximum) to ``projected_length`` rows,
    and every query attends those (and the exact special tokens, ``global_special_tokens``).

    - ``projected_length``: k, the rows keys and values are projected to; at most ``max_position_embeddings``;
      None for 128 or ``max_position_embeddings`` if that is smaller (:meth:`projected_rows`). 128 is the
      paper's k at n = 512 and the setting measured on all-MiniLM-L6-v2 (0.83 sentence cosine with the
      pooling start and the special tokens exact).
    - ``projection_sharing``: ``"none"`` (E and F per head), ``"headwise"`` (E and F per layer, shared by
      the heads) or ``"key_value"`` (one matrix per layer for keys and values of every head): three of
      the paper's four modes. ``"layerwise"`` (one matrix for the whole model) is refused: a mechanism
      owns the parameters of its own layer.
    - ``projection_init``: ``"pooling"`` (row i averages segment i of the real tokens: a converted model
      starts from mean pooling, measured 0.68 sentence cosine without and 0.83 with the special tokens)
      or ``"gaussian"`` (the paper's N(0, 1/k) entries; measured 0.02: the converted model is destroyed).
    """

    model_type = "effzoo-linformer"

    projected_length: int | None = None
    projection_sharing: str = "headwise"
    projection_init: str = "pooling"

    def check_backbone(self) -> None:
        super().check_backbone()
        positive_int("projected_length", self.projected_length, "Choose the rows keys are projected to, e.g. 128, "
                     "or None for 128 (at most max_position_embeddings).", allow_none=True)
        if self.projected_rows() > self.max_position_embeddings:
            raise ValueError(
                f"projected_length ({self.projected_length}) is larger than max_position_embeddings "
                f"({self.max_position_embeddings}), the columns of the projection; choose at most "
                f"{self.max_position_embeddings} (projected_length = max_position_embeddings is exact attention)."
            )
        if self.projection_sharing == "layerwise":
            raise ValueError(
                "projection_sharing='layerwise' (one projection for every layer) is not implemented: each layer's "
                "mechanism owns its own projection. Use 'key_value' (one matrix per layer for keys and values of "
                "all heads), 'headwise' or 'none'."
            )
        one_of("projection_sharing", self.projection_sharing, PROJECTION_SHARING)
        one_of("projection_init", self.projection_init, PROJECTION_INITS)
        if self.is_decoder:
            raise LinformerAttention.causal_refusal("is_decoder=True (a causal model)", "Set is_decoder=False")

    def projected_rows(self) -> int:
        """k: ``projected_length``, or 128 (at most ``max_position_embeddings``) when it is None."""
        if self.projected_length is None:
            return min(DEFAULT_PROJECTED_LENGTH, self.max_position_embeddings)
        return self.projected_length
