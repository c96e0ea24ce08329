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


class EarlyExit:
    """The encoder's exit hook at inference: each example halts at its own layer and predicts there.

    ``hidden_states`` carry ``rows_per_example`` consecutive rows per example (the choices of a
    multiple-choice question). Called after each layer on the rows still running, it reads out the
    predictions and halting features (``readout``), records pₙ, and lets go the examples that stop:
    at the first layer whose cumulative halting probability passes ``threshold`` (with ``sample``: at
    layer n with probability λₙ), and at the last layer. Afterwards ``predictions`` (examples, …),
    ``layers_used`` (examples,) and ``probabilities`` pₙ (examples, layers; zero after the layer an
    example stopped at) hold the result.
    """

    def __init__(self, readout: Readout, halting: HaltingUnits, examples: int, device: torch.device, *,
                 rows_per_example: int = 1, threshold: float = 0.5, sample: bool = False) -> None:
        self.readout, self.halting = readout, halting
        self.rows_per_example, self.threshold, self.sample = rows_per_example, threshold, sample
        self.active = torch.arange(examples, device=device)
        self.survived = torch.ones(examples, device=device)  # ∏ₖ<ₙ (1 − λₖ) of the running examples
        self.layers_used = torch.zeros(examples, dtype=torch.long, device=device)
        self.probabilities = torch.zeros(examples, halting.num_layers, device=device)
        self.predictions: torch.Tensor | None = None

    def __call__(self, index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """After layer ``index``: record the examples that stop; return the rows that go on."""
        layer_predictions, features = self.readout(hidden_states)
        halt_probability = self.halting(index, features)
        self.probabilities[self.active, index] = halt_probability * self.survived
        if self.sample:
            stop = torch.bernoulli(halt_probability).bool()
        else:
            stop = 1.0 - self.survived * (1.0 - halt_probability) > self.threshold
        if index == self.halting.num_layers - 1:
            stop = torch.ones_like(stop)
        if self.predictions is None:
            self.predictions = layer_predictions.new_zeros(len(self.layers_used), *layer_predictions.shape[1:])
        self.predictions[self.active[stop]] = layer_predictions[stop]
        self.layers_used[self.active[stop]] = index + 1
        keep = ~stop
        self.active, self.survived = self.active[keep], (self.survived * (1.0 - halt_probability))[keep]
        return keep.repeat_interleave(self.rows_per_example)
