"""PonderNet adaptive depth: the loss, the early exit per example, the start as a plain classifier."""

import math

import pytest
import torch
from transformers import BertForSequenceClassification

import effzoo
from effzoo.modeling.ponder import geometric_prior, halting_distribution, ponder_loss
from tests.conftest import TINY, random_batch, save_tiny_checkpoint


def ponder_config(**fields):
    return effzoo.FullConfig(**{**TINY, "num_hidden_layers": 4, "ponder": True, "num_labels": 3, **fields})


def test_loss_equals_its_formula_on_hand_made_halting_probabilities():
    halting = torch.tensor([[0.5, 0.2, 1.0], [0.1, 0.9, 1.0]])
    layer_losses = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 4.0]])
    lambda_prior, beta = 0.3, 0.7
    p = [[0.5, 0.5 * 0.2, 0.5 * 0.8], [0.1, 0.9 * 0.9, 0.9 * 0.1]]  # pₙ = λₙ ∏ₖ<ₙ (1 − λₖ)
    prior = [0.3, 0.7 * 0.3, 0.7 * 0.7]  # geometric, the rest of the mass on the last layer
    expected = 0.0
    for row, losses in zip(p, layer_losses.tolist()):
        expected += sum(pn * ln for pn, ln in zip(row, losses)) + beta * sum(
            pn * math.log(pn / qn) for pn, qn in zip(row, prior))
    expected /= 2
    probabilities = halting_distribution(halting)
    torch.testing.assert_close(probabilities, torch.tensor(p))
    torch.testing.assert_close(geometric_prior(lambda_prior, 3, halting), torch.tensor(prior))
    assert ponder_loss(layer_losses, probabilities, lambda_prior, beta).item() == pytest.approx(expected, rel=1e-6)


def test_training_loss_is_pondernet_and_reaches_the_halting_units():
    model = effzoo.FullForSequenceClassification(ponder_config()).train()
    with torch.no_grad():
        model.halting.weight.normal_(0, 0.5)
    input_ids, mask = random_batch()
    labels = torch.tensor([0, 2, 1])
    out = model(input_ids, attention_mask=mask, labels=labels)
    hidden = model.bert(input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
    pooled = [model.bert.pooler(state) for state in hidden]
    halting = torch.stack([torch.sigmoid(p @ model.halting.weight[n] + model.halting.bias[n]) for n, p in
                           enumerate(pooled[:-1])] + [torch.ones(3)], dim=1)
    losses = torch.stack([torch.nn.functional.cross_entropy(model.classifier(p), labels, reduction="none")
                          for p in pooled], dim=1)
    torch.testing.assert_close(out.loss, ponder_loss(losses, halting_distribution(halting), 0.2, 0.01))
    torch.testing.assert_close(out.halting_probabilities.sum(-1), torch.ones(3))
    assert out.layers_used.tolist() == [4, 4, 4]
    out.loss.backward()
    assert model.halting.weight.grad.abs().sum() > 0 and model.halting.bias.grad.abs().sum() > 0


def test_a_new_model_runs_every_layer_and_equals_the_plain_classifier():
    model = effzoo.FullForSequenceClassification(ponder_config()).eval()
    plain = effzoo.FullForSequenceClassification(ponder_config(ponder=False)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    input_ids, mask = random_batch()
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask)
        expected = plain(input_ids, attention_mask=mask).logits
    assert out.layers_used.tolist() == [4, 4, 4]
    assert (out.halting_probabilities[:, :-1].sum(-1) < 0.5).all()
    torch.testing.assert_close(out.logits, expected, atol=0, rtol=0)


def test_converted_from_bert_equals_the_bert_classifier(tmp_path):
    source = save_tiny_checkpoint(BertForSequenceClassification, tmp_path / "bert", num_labels=3)
    report = effzoo.convert(source, "full", tmp_path / "ponder", overrides={"ponder": True}, progress=False)
    assert set(report.new_parameters) == {"halting.weight", "halting.bias"}
    model = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "ponder").eval()
    input_ids, mask = random_batch()
    with torch.no_grad():
        expected = BertForSequenceClassification.from_pretrained(source).eval()(input_ids, attention_mask=mask)
        out = model(input_ids, attention_mask=mask)
    assert out.layers_used.tolist() == [2, 2, 2]
    assert (out.logits - expected.logits).abs().max() < 1e-5


def padded_batch(lengths, length=12):
    input_ids = torch.randint(5, 99, (len(lengths), length), generator=torch.Generator().manual_seed(7))
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    return input_ids.masked_fill(mask == 0, 0), mask


def count_rows_per_layer(model):
    rows = []
    for index, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_pre_hook(lambda module, args, index=index: rows.append((index, args[0].shape[0])))
    return rows


def spread_halting(model, scale=4.0):
    """Halting units that depend strongly on the input, so that examples stop at different layers."""
    torch.manual_seed(2)
    with torch.no_grad():
        model.halting.weight.normal_(0, scale)
        model.halting.bias.zero_()


def test_examples_stop_at_their_own_layer_as_alone_and_halted_ones_run_no_layer():
    model = effzoo.FullForSequenceClassification(ponder_config()).eval()
    spread_halting(model)
    input_ids, mask = padded_batch([12, 10, 8, 6, 11, 7])
    rows = count_rows_per_layer(model)
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask)
    used = out.layers_used
    assert len(set(used.tolist())) > 1, used  # they do stop at different layers
    # No layer runs for an example that has halted: layer n sees exactly the examples using more than n layers.
    assert rows == [(n, int((used > n).sum())) for n in range(4) if (used > n).any()]
    assert sum(count for _, count in rows) == int(used.sum())
    cumulative = out.halting_probabilities.cumsum(-1)
    for row, n in enumerate(used.tolist()):  # the first layer whose cumulative probability passes 0.5
        assert n == 4 or (cumulative[row, n - 1] > 0.5 and (n == 1 or cumulative[row, n - 2] <= 0.5))
    for row in range(6):
        real = mask[row].bool()
        with torch.no_grad():
            alone = model(input_ids[row, real][None])
        assert alone.layers_used.item() == used[row].item()
        torch.testing.assert_close(alone.logits[0], out.logits[row], atol=1e-5, rtol=1e-5)


def test_multiple_choice_questions_halt_as_a_whole():
    model = effzoo.FullForMultipleChoice(ponder_config()).eval()
    spread_halting(model)
    input_ids, mask = padded_batch([10, 9, 8, 10, 5, 7], length=10)
    input_ids, mask = input_ids.view(3, 2, 10), mask.view(3, 2, 10)
    rows = count_rows_per_layer(model)
    with torch.no_grad():
        out = model(input_ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and out.layers_used.shape == (3,)
    assert sum(count for _, count in rows) == 2 * int(out.layers_used.sum())
    for question in range(3):
        with torch.no_grad():
            alone = model(input_ids[question:question + 1], attention_mask=mask[question:question + 1])
        assert alone.layers_used.item() == out.layers_used[question].item()
        torch.testing.assert_close(alone.logits[0], out.logits[question], atol=1e-5, rtol=1e-5)


def test_sampled_exit_stops_at_random_layers():
    model = effzoo.FullForSequenceClassification(ponder_config(ponder_sample=True)).eval()
    with torch.no_grad():
        model.halting.bias.fill_(0.0)  # λ = 1/2 at every layer
    input_ids = torch.randint(5, 99, (64, 6))
    torch.manual_seed(0)
    with torch.no_grad():
        used = model(input_ids).layers_used
    assert used.min() == 1 and used.max() == 4 and 1.5 < used.float().mean() < 2.3  # E = 1 + ½ + ¼ + ⅛


def test_heads_without_one_prediction_per_example_refuse_ponder():
    for head in (effzoo.FullForMaskedLM, effzoo.FullForTokenClassification, effzoo.FullForQuestionAnswering,
                 effzoo.FullForCausalLM):
        with pytest.raises(ValueError, match=f"ponder=True is not supported by {head.__name__}"):
            head(ponder_config())
    with pytest.raises(ValueError, match="ponder_threshold must be in"):
        ponder_config(ponder_threshold=1.0)
    with pytest.raises(ValueError, match="ponder_lambda_prior must be in"):
        ponder_config(ponder_lambda_prior=0)
