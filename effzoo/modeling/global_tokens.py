"""The global tokens a head chooses when the caller gives no ``global_attention_mask``.

Transformers' Longformer heads make the task's key tokens global (Beltagy et al. 2020, §3.2):
the [CLS] token for sequence classification and multiple choice, the question for extractive
QA. effzoo's heads do the same for every mechanism that takes a ``global_attention_mask`` (the
sparse family), so a model converted with ``global_special_tokens=False`` (as a Transformers
Longformer or BigBird checkpoint is) behaves as it did in Transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: ``"first"``: the first real token ([CLS]); ``"question"``: the first segment, [CLS] and question.
KINDS = ("first", "question")


def default_global_attention_mask(
    kind: str,
    config: Any,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    shape: tuple[int, int],
    device: torch.device,
) -> torch.Tensor | None:
    """(batch, L) long, 1 for the tokens a head of ``kind`` makes global; None when it cannot tell.

    The question is the first segment: the real tokens with ``token_type_ids == 0`` when the
    segments are given (BERT), else the tokens before the first separator (``config.sep_token_id``,
    or ``eos_token_id`` as in RoBERTa, whose ``</s>`` separates the segments), as Transformers'
    ``LongformerForQuestionAnswering`` does.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind of default global tokens {kind!r}; expected one of {KINDS}.")
    real = torch.ones(shape, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
    if kind == "first":
        first = real.to(torch.uint8).argmax(-1, keepdim=True)
        return torch.zeros(shape, dtype=torch.long, device=device).scatter(1, first, 1) * real
    if token_type_ids is not None and bool((token_type_ids * real).any()):
        return (real & (token_type_ids == 0)).long()
    separator = config.sep_token_id if getattr(config, "sep_token_id", None) is not None else config.eos_token_id
    if input_ids is None or not isinstance(separator, int):
        logger.warning_once(
            "Cannot mark the question tokens as global: give token_type_ids, or input_ids with "
            "config.sep_token_id set, or a global_attention_mask. Only the special tokens are global."
        )
        return None
    is_separator = (input_ids == separator) & real
    # Tokens before the first separator (all of them where a row has none).
    before_first = is_separator.long().cumsum(-1) == 0
    return (real & before_first).long()
