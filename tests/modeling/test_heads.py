"""Every head: outputs, losses, weight tying, save -> Auto load, generation."""

import pytest
import torch
import transformers

import effzoo
from effzoo.variants import get_variant
from tests.conftest import TINY, random_batch

HEAD_INPUTS = {
    "AutoModel": {},
    "AutoModelForMaskedLM": {"labels": torch.randint(0, 99, (3, 12))},
    "AutoModelForCausalLM": {"labels": torch.randint(0, 99, (3, 12))},
    "AutoModelForSequenceClassification": {"labels": torch.tensor([0, 1, 1])},
    "AutoModelForTokenClassification": {"labels": torch.randint(0, 2, (3, 12))},
    "AutoModelForQuestionAnswering": {
        "start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 30])
    },
    "AutoModelForMultipleChoice": {"labels": torch.tensor([0, 1, 1])},
}


def head_batch(auto_name):
    input_ids, mask = random_batch()
    if auto_name == "AutoModelForMultipleChoice":  # (batch, num_choices, length)
        return input_ids[:, None].expand(-1, 2, -1), mask[:, None].expand(-1, 2, -1)
    return input_ids, mask


def test_full_declares_every_head():
    assert set(get_variant("full").model_classes) == set(HEAD_INPUTS)


@pytest.mark.parametrize("auto_name", sorted(HEAD_INPUTS))
def test_head_save_and_auto_load_identical(auto_name, tiny_full_config, tmp_path):
    model_class = get_variant("full").model_classes[auto_name]
    model = model_class(tiny_full_config).eval()
    input_ids, mask = head_batch(auto_name)
    out = model(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
    if auto_name != "AutoModel":
        assert out.loss is not None and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = getattr(transformers, auto_name).from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    again = reloaded(input_ids, attention_mask=mask, **HEAD_INPUTS[auto_name])
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(again[name], value, atol=1e-6, rtol=1e-6)


def test_trust_remote_code_loads_the_same_model(tiny_full_config, tmp_path):
    model = effzoo.FullForSequenceClassification(tiny_full_config).eval()
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"AutoModelForSequenceClassification": "effzoo_remote.FullForSequenceClassification"' in config
    assert (tmp_path / "effzoo_remote.py").is_file()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)
    input_ids, mask = random_batch()
    torch.testing.assert_close(reloaded.eval()(input_ids, attention_mask=mask).logits,
                               model(input_ids, attention_mask=mask).logits)


def test_multiple_choice_shapes_and_loss(tiny_full_config):
    model = effzoo.FullForMultipleChoice(tiny_full_config).eval()
    input_ids = torch.randint(5, 99, (2, 4, 7))
    mask = torch.ones_like(input_ids)
    mask[:, :, 5:] = 0
    out = model(input_ids, attention_mask=mask, labels=torch.tensor([1, 3]))
    assert out.logits.shape == (2, 4) and torch.isfinite(out.loss)
    # Each choice is scored on its own: the same as running it alone.
    alone = model(input_ids[:1, 2:3], attention_mask=mask[:1, 2:3]).logits
    torch.testing.assert_close(alone[0, 0], out.logits[0, 2])
    with pytest.raises(ValueError, match="num_choices"):
        model(input_ids[:, 0])


@pytest.mark.parametrize(
    "num_labels, labels, problem_type, loss_fn",
    [
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression",
         lambda logits, labels: torch.nn.functional.mse_loss(logits.squeeze(), labels)),
        (3, torch.tensor([0, 2, 1]), "single_label_classification", torch.nn.functional.cross_entropy),
        (3, torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]]), "multi_label_classification",
         torch.nn.functional.binary_cross_entropy_with_logits),
    ],
)
def test_sequence_classification_problem_types(num_labels, labels, problem_type, loss_fn):
    config = effzoo.FullConfig(**TINY, num_labels=num_labels)
    model = effzoo.FullForSequenceClassification(config).eval()
    input_ids, mask = random_batch()
    out = model(input_ids, attention_mask=mask, labels=labels)
    assert model.config.problem_type == problem_type
    torch.testing.assert_close(out.loss, loss_fn(out.logits, labels))


def test_mlm_decoder_is_tied_and_resizes(tiny_full_config):
    model = effzoo.FullForMaskedLM(tiny_full_config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model(torch.randint(0, 120, (1, 5))).logits.shape == (1, 5, 120)


def test_generate_with_cache_equals_the_causal_forward(tiny_full_config):
    model = effzoo.FullForCausalLM(tiny_full_config).eval()
    assert model.config.is_decoder
    prompt = torch.randint(5, 99, (2, 5))
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert generated.shape == (2, 11)
    greedy = model(generated, use_cache=False).logits.argmax(-1)
    torch.testing.assert_close(greedy[:, 4:-1], generated[:, 5:])


def test_generate_with_left_padding_matches_each_prompt_alone(tiny_full_config):
    model = effzoo.FullForCausalLM(tiny_full_config).eval()
    prompts = torch.randint(5, 99, (2, 6))
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0
    prompts[1, :2] = 0
    batched = model.generate(prompts, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    alone = model.generate(prompts[1:, 2:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(batched[1, 2:], alone[0])


def test_generation_uses_the_cache_name_of_the_installed_transformers(tiny_full_config):
    """Transformers 5.24 renamed the outputs' ``past_key_values`` to ``cache`` and warns on the old name."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()
    library_logger.addHandler(handler)
    try:
        model = effzoo.FullForCausalLM(tiny_full_config).eval()
        model.generate(torch.randint(5, 99, (1, 4)), max_new_tokens=2, do_sample=False)
    finally:
        library_logger.removeHandler(handler)
    assert not [r for r in records if "deprecated" in r.getMessage()], [r.getMessage() for r in records]
