"""Key/value cache layers for causal decoding with the sparse patterns (``transformers.Cache`` layers).

- :class:`SinkSlidingWindowLayer`: a window pattern (``local``, causal ``longformer``) needs only
  the last ``window`` tokens plus the first real token (its attention sink): O(window) memory.
- :class:`GrowingKeyValueLayer`: a pattern that reaches back to the start (``sparse``,
  ``axial``) keeps every key, as ``DynamicLayer`` does, but in a buffer with room to grow, so that
  a new token costs O(1) to append instead of the O(cache) copy of ``torch.cat``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class GrowingKeyValueLayer(DynamicLayer):
    """``DynamicLayer`` with amortised O(1) appends: keys and values are a prefix of a buffer that
    grows by a quarter (at least ``min_capacity`` rows) when full, as a Python list grows.

    ``DynamicLayer`` concatenates, copying the whole cache for every token: at 16K tokens that copy
    was 80% of a decoding step. ``self.keys``/``self.values`` are views of the first
    ``get_seq_length()`` rows, so every inherited method (crop, beam reordering, batch selection)
    works unchanged; a method that replaces them with a new tensor just makes the next append
    allocate a new buffer. Appends that autograd records (a cache filled with gradients enabled)
    concatenate, since writing into a buffer that a graph saved would invalidate it.
    """

    #: Spare rows a new buffer has at least.
    min_capacity = 256

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self._key_buffer = self._append(self.keys, self._key_buffer, key_states)
        self.values, self._value_buffer = self._append(self.values, self._value_buffer, value_states)
        return self.keys, self.values

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer = self._value_buffer = None

    def _append(
        self, cached: torch.Tensor, buffer: torch.Tensor | None, new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cached + new as a view of the buffer, the buffer), growing or making the buffer as needed."""
        if torch.is_grad_enabled() and (new.requires_grad or cached.requires_grad):
            return torch.cat([cached, new], dim=-2), None
        filled = cached.shape[-2] if cached.dim() == 4 else 0
        total = filled + new.shape[-2]
        if not (self._is_prefix_of(cached, buffer) and total <= buffer.shape[-2]):
            capacity = total + max(total // 4, self.min_capacity)
            grown = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
            if filled:
                grown[..., :filled, :].copy_(cached)
            buffer = grown
        buffer[..., filled:total, :].copy_(new)
        return buffer[..., :total, :], buffer

    @staticmethod
    def _is_prefix_of(cached: torch.Tensor, buffer: torch.Tensor | None) -> bool:
        """Whether ``cached`` is still the view of the buffer's first rows (nothing replaced it)."""
        return (
            buffer is not None
            and cached.dim() == 4
            and cached.data_ptr() == buffer.data_ptr()
            and cached.shape[:2] == buffer.shape[:2]
            and cached.stride() == buffer.stride()
        )

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


class SinkSlidingWindowLayer(DynamicSlidingWindowLayer):
    """Transformers' sliding-window cache layer plus one attention-sink slot per sequence.

    Keeps each sequence's first real token (the causal global token, whatever the padding) and
    its last ``sliding_window - 1`` tokens: memory O(window). ``update`` returns
    ``[sink, cached window, new tokens]``; pass ``sink_index`` (batch,), the index among the new
    tokens of the sequence's first real token, or -1 where it is not among them.
    """

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        *args: Any,
        sink_index: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys = key_states.new_zeros(*key_states.shape[:2], 1, key_states.shape[-1])
            self.values = value_states.new_zeros(*value_states.shape[:2], 1, value_states.shape[-1])
        self.cumulative_length += key_states.shape[-2]
        keys = self._append(self.keys, key_states, sink_index)
        values = self._append(self.values, value_states, sink_index)
        self.keys, self.values = self._keep_window(keys), self._keep_window(values)
        return keys, values

    @staticmethod
    def _append(cached: torch.Tensor, new: torch.Tensor, sink_index: torch.Tensor | None) -> torch.Tensor:
        """[sink, cached window, new], the sink taken from the new tokens where it is among them."""
        sink = cached[:, :, :1]
        if sink_index is not None:
            index = sink_index.clamp(min=0)[:, None, None, None].expand(-1, new.shape[1], 1, new.shape[-1])
            sink = torch.where((sink_index >= 0)[:, None, None, None], new.gather(2, index), sink)
        return torch.cat([sink, cached[:, :, 1:], new], dim=2)

    def _keep_window(self, states: torch.Tensor) -> torch.Tensor:
        """The sink and the last ``sliding_window - 1`` tokens."""
        start = max(1, states.shape[2] - (self.sliding_window - 1))
        return torch.cat([states[:, :, :1], states[:, :, start:]], dim=2)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SinkSlidingWindowLayer cannot be cropped; regenerate from the prompt instead.")
