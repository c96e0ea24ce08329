"""Heads choose the global tokens when none are given, as Transformers' Longformer heads do."""

import pytest
import torch

import effzoo
from effzoo.modeling.global_tokens import default_global_attention_mask
from tests.conftest import TINY

SEP = 3


def test_first_token_is_the_first_real_one_whatever_the_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    config = effzoo.EffzooLongformerConfig(**TINY)
    chosen = default_global_attention_mask("first", config, None, mask, None, (2, 4), torch.device("cpu"))
    assert chosen.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]


def test_question_is_the_first_segment_from_token_types_or_the_first_separator():
    config = effzoo.EffzooLongformerConfig(**TINY, sep_token_id=SEP)
    input_ids = torch.tensor([[2, 7, 8, SEP, 9, 9, SEP, 0], [0, 2, 7, SEP, 9, SEP, 0, 0]])
    mask = (input_ids != 0).long()
    token_types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 0, 0]])
    cpu = torch.device("cpu")
    by_types = default_global_attention_mask("question", config, input_ids, mask, token_types, (2, 8), cpu)
    assert by_types.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0, 0]]
    by_separator = default_global_attention_mask("question", config, input_ids, mask, None, (2, 8), cpu)
    assert by_separator.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]
    no_separator = effzoo.EffzooLongformerConfig(**TINY)
    assert default_global_attention_mask("question", no_separator, input_ids, mask, None, (2, 8), cpu) is None
    with pytest.raises(ValueError, match="Unknown kind"):
        default_global_attention_mask("cls", config, input_ids, mask, None, (2, 8), cpu)


@pytest.fixture
def local_only_config():
    """A window too small to connect the ends, and no special tokens global: only the heads' choice is."""
    return effzoo.EffzooLongformerConfig(**TINY, attention_window=2, global_special_tokens=False, sep_token_id=SEP)


def _batch():
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, 99, (2, 16), generator=generator)
    input_ids[:, 0], input_ids[:, 5], input_ids[:, -1] = 2, SEP, SEP
    token_types = (torch.arange(16) > 5).long().expand(2, -1)
    return input_ids, torch.ones_like(input_ids), token_types


def test_sequence_classification_makes_cls_global_by_default(local_only_config):
    model = effzoo.EffzooLongformerForSequenceClassification(local_only_config).eval()
    input_ids, mask, _ = _batch()
    cls_global = torch.zeros_like(input_ids)
    cls_global[:, 0] = 1
    with torch.no_grad():
        default = model(input_ids, attention_mask=mask).logits
        explicit = model(input_ids, attention_mask=mask, global_attention_mask=cls_global).logits
        none = model(input_ids, attention_mask=mask, global_attention_mask=torch.zeros_like(input_ids)).logits
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-6)
    assert (default - none).abs().max() > 1e-4  # [CLS] sees the whole input only when it is global


def test_multiple_choice_makes_each_choice_cls_global(local_only_config):
    model = effzoo.EffzooLongformerForMultipleChoice(local_only_config).eval()
    input_ids, mask, _ = _batch()
    choices = input_ids[None].expand(3, -1, -1).clone()
    cls_global = torch.zeros_like(choices)
    cls_global[..., 0] = 1
    with torch.no_grad():
        default = model(choices, attention_mask=mask[None].expand(3, -1, -1)).logits
        explicit = model(choices, attention_mask=mask[None].expand(3, -1, -1), global_attention_mask=cls_global).logits
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-6)


def test_question_answering_makes_the_question_global(local_only_config):
    model = effzoo.EffzooLongformerForQuestionAnswering(local_only_config).eval()
    input_ids, mask, token_types = _batch()
    question = (token_types == 0).long()
    with torch.no_grad():
        default = model(input_ids, attention_mask=mask, token_type_ids=token_types).start_logits
        explicit = model(input_ids, attention_mask=mask, token_type_ids=token_types,
                         global_attention_mask=question).start_logits
        by_separator = model(input_ids, attention_mask=mask, token_type_ids=token_types * 0).start_logits
        before_separator = model(input_ids, attention_mask=mask, token_type_ids=token_types * 0,
                                 global_attention_mask=(torch.arange(16) < 5).long().expand(2, -1)).start_logits
    torch.testing.assert_close(default, explicit, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_separator, before_separator, rtol=0, atol=1e-6)


def test_heads_of_causal_or_dense_models_choose_nothing():
    full = effzoo.FullForSequenceClassification(effzoo.FullConfig(**TINY))
    input_ids, mask, _ = _batch()
    assert full.default_global_inputs({"input_ids": input_ids, "attention_mask": mask}) == {}
    decoder = effzoo.EffzooLongformerForSequenceClassification(effzoo.EffzooLongformerConfig(**TINY, is_decoder=True))
    assert decoder.default_global_inputs({"input_ids": input_ids, "attention_mask": mask}) == {}
