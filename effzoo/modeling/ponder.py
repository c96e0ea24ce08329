"""PonderNet adaptive depth (Banino et al. 2021): halting units, the loss, and the early exit.

After each layer n a halting unit gives λₙ = σ(wₙ·hₙ + bₙ), the probability of stopping there
given that no earlier layer stopped (hₙ the head's features of layer n: the pooled first token);
the last layer always stops (λ_N = 1), so the halting distribution

    pₙ = λₙ ∏ₖ<ₙ (1 − λₖ)

sums to 1 over the N layers. The head predicts yₙ from every layer's state with its one
classifier. Training runs every layer and minimises (eq. 6 of the paper)

    L = Σₙ pₙ · L(yₙ) + β · KL(p ‖ p_G),

p_G the geometric prior with λₙ = ``ponder_lambda_prior`` at every layer, truncated the same way
(its remaining mass on the last layer). Inference runs each example until the first layer whose
cumulative halting probability Σₖ≤ₙ pₖ passes ``ponder_threshold`` (or, with ``ponder_sample``,
stops at layer n with probability λₙ), predicts there, and drops the example from the batch:
no further layer runs for it.

Initialisation: the halting units start with zero weights and the bias that gives every layer the
same λ with Σₙ<N pₙ = threshold / 2, so a new (or newly converted) model runs every layer and
equals the plain classifier until training moves the units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import initialization as init


class HaltingUnits(nn.Module):
    """One logistic unit per layer but the last: ``weight`` (layers − 1, hidden), ``bias`` (layers − 1)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.num_layers = config.num_hidden_layers
        self.threshold = config.ponder_threshold
        self.weight = nn.Parameter(torch.empty(self.num_layers - 1, config.hidden_size))
        self.bias = nn.Parameter(torch.empty(self.num_layers - 1))
        self.reset_parameters()

    def initial_bias(self) -> float:
        """logit(λ₀) for the constant λ₀ with 1 − (1 − λ₀)^(N−1) = threshold / 2."""
        if self.num_layers < 2:
            return 0.0
        halting = 1.0 - (1.0 - self.threshold / 2) ** (1.0 / (self.num_layers - 1))
        return math.log(halting / (1.0 - halting))

    def reset_parameters(self) -> None:
        """Zero weights and :meth:`initial_bias` (Transformers' init: loaded values are kept)."""
        init.zeros_(self.weight)
        init.constant_(self.bias, self.initial_bias())

    def forward(self, layer_index: int, features: torch.Tensor) -> torch.Tensor:
        """λ of layer ``layer_index`` (0-based) for each row of ``features`` (rows, hidden)."""
        if layer_index == self.num_layers - 1:
            return features.new_ones(features.shape[0], dtype=torch.float32)
        logits = features.float() @ self.weight[layer_index].float() + self.bias[layer_index].float()
        return torch.sigmoid(logits)


def halting_distribution(halting: torch.Tensor) -> torch.Tensor:
    """pₙ = λₙ ∏ₖ<ₙ (1 − λₖ) for λ of shape (..., layers)."""
    survived = torch.cumprod(1.0 - halting, dim=-1)
    before = torch.cat([torch.ones_like(survived[..., :1]), survived[..., :-1]], dim=-1)
    return halting * before


def geometric_prior(lambda_prior: float, num_layers: int, like: torch.Tensor) -> torch.Tensor:
    """The geometric distribution λ_p (1 − λ_p)ⁿ⁻¹, truncated at ``num_layers`` (the rest on the last)."""
    halting = torch.full((num_layers,), float(lambda_prior), dtype=like.dtype, device=like.device)
    halting[-1] = 1.0
    return halting_distribution(halting)


def ponder_loss(layer_losses: torch.Tensor, halting_probabilities: torch.Tensor, lambda_prior: float,
                beta: float) -> torch.Tensor:
    """Σₙ pₙ · L(yₙ) + β · KL(p ‖ p_G), averaged over the examples.

    ``layer_losses`` and ``halting_probabilities`` are (examples, layers): the loss of each layer's
    prediction for each example, and pₙ.
    """
    p = halting_probabilities
    prior = geometric_prior(lambda_prior, p.shape[-1], p)
    reconstruction = (p * layer_losses).sum(-1)
    kl = (torch.xlogy(p, p) - p * prior.log()).sum(-1)
    return (reconstruction + beta * kl).mean()


#: ``readout(hidden_states of the rows) -> (predictions per example, halting features per example)``
Readout = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def run_with_early_exit(
    run_layer: Callable[[int, torch.Tensor, torch.Tensor | None, dict[str, Any]], torch.Tensor],
    num_layers: int,
    hidden_states: torch.Tensor,
    padding_mask: torch.Tensor | None,
    row_inputs: dict[str, Any],
    readout: Readout,
    halting: HaltingUnits,
    *,
    rows_per_example: int = 1,
    threshold: float = 0.5,
    sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the layers, each example until it halts; return its predictions, layers used and pₙ.

    ``hidden_states`` has ``rows_per_example`` consecutive rows per example (the choices of a
    multiple-choice question); ``row_inputs`` holds the mechanism's extra inputs, sliced with the
    rows that keep running (tensors whose first dimension is the number of rows).
    ``run_layer(index, hidden_states, padding_mask, row_inputs)`` runs one layer on the rows given.
    Returns predictions (examples, …), layers used (examples,) and pₙ (examples, layers), zero
    after the layer an example stopped at.
    """
    rows = hidden_states.shape[0]
    examples = rows // rows_per_example
    device = hidden_states.device
    active = torch.arange(examples, device=device)
    survived = torch.ones(examples, device=device)  # ∏ₖ<ₙ (1 − λₖ) of the running examples
    layers_used = torch.zeros(examples, dtype=torch.long, device=device)
    probabilities = torch.zeros(examples, num_layers, device=device)
    predictions = None
    for index in range(num_layers):
        hidden_states = run_layer(index, hidden_states, padding_mask, row_inputs)
        layer_predictions, features = readout(hidden_states)
        halt_probability = halting(index, features)
        probabilities[active, index] = halt_probability * survived
        if sample:
            stop = torch.bernoulli(halt_probability).bool()
        else:
            stop = 1.0 - survived * (1.0 - halt_probability) > threshold
        if index == num_layers - 1:
            stop = torch.ones_like(stop)
        if predictions is None:
            predictions = layer_predictions.new_zeros(examples, *layer_predictions.shape[1:])
        predictions[active[stop]] = layer_predictions[stop]
        layers_used[active[stop]] = index + 1
        keep = ~stop
        if not bool(keep.any()):
            break
        active, survived = active[keep], (survived * (1.0 - halt_probability))[keep]
        keep_rows = keep.repeat_interleave(rows_per_example)
        hidden_states = hidden_states[keep_rows]
        padding_mask = padding_mask[keep_rows] if padding_mask is not None else None
        row_inputs = {
            name: value[keep_rows] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == len(
                keep_rows) else value
            for name, value in row_inputs.items()
        }
    return predictions, layers_used, probabilities
