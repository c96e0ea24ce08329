"""Optimizers for ``effzoo finetune`` / ``pretrain``: RAdam, Lookahead, and the choice handed to ``Trainer``.

- ``adamw``: Trainer's own default (``TrainingArguments.optim``), unchanged.
- ``radam``: ``torch.optim.RAdam`` (Liu et al. 2020) with decoupled weight decay, so that
  ``--weight-decay`` means what it means for AdamW.
- ``lookahead_adamw`` / ``lookahead_radam``: :class:`Lookahead` (Zhang et al. 2019) around them.

The choice reaches ``Trainer`` through its ``optimizer_cls_and_kwargs`` argument: Trainer still
builds its parameter groups (weight decay on, off for biases and LayerNorms), its scheduler, its
checkpoints and its distributed wrapping; there is no training loop here.

No maintained Lookahead fits as a dependency (``torch_optimizer``'s is unmaintained and pins old
torch; timm's starts the slow weights at the first synchronisation instead of at θ₀ and brings
torchvision), so :class:`Lookahead` is written once here, on ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

#: The ``--optimizer`` values.
OPTIMIZERS = ("adamw", "radam", "lookahead_adamw", "lookahead_radam")


class Lookahead(Optimizer):
    """Lookahead (Zhang et al. 2019, Algorithm 1) around any torch optimizer.

    The inner ("fast") optimizer, ``optimizer_class(params, **optimizer_kwargs)``, takes every step;
    every ``k`` of its steps the slow weights φ move towards the fast ones θ,
    φ ← φ + α (θ − φ), and the fast weights restart from them, θ ← φ. The slow weights start as
    the parameters before the first step (φ₀ = θ₀). The constructor follows
    ``ZeroRedundancyOptimizer``'s (``params, optimizer_class, **defaults``), so that ``Trainer``
    builds it like any optimizer class.

    ``param_groups`` are the inner optimizer's own (a scheduler that sets ``lr`` sets it for the
    inner steps), each with ``lookahead_k``, ``lookahead_alpha`` and ``lookahead_step`` (fast steps
    taken). ``state_dict()`` is the inner optimizer's with each parameter's slow weights added as
    ``lookahead_slow_weights``, so a checkpoint taken in the middle of a k-cycle resumes it exactly.
    """

    def __init__(self, params: Any, optimizer_class: type[Optimizer] = torch.optim.AdamW, *, k: int = 5,
                 alpha: float = 0.5, **optimizer_kwargs: Any) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"Lookahead k must be a positive integer (fast steps per slow step), got {k!r}.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in (0, 1] (1 = the inner optimizer alone), got {alpha!r}.")
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"optimizer_class must be a torch.optim.Optimizer class, got {optimizer_class!r}.")
        self.optimizer = optimizer_class(params, **optimizer_kwargs)
        defaults = {"lookahead_k": k, "lookahead_alpha": alpha, "lookahead_step": 0}
        self._sharing_inner_groups = True
        super().__init__(self.optimizer.param_groups, defaults)  # sets the lookahead entries of each group
        self._sharing_inner_groups = False
        self.param_groups = self.optimizer.param_groups  # one list, shared with the inner optimizer

    def __repr__(self) -> str:
        group = self.param_groups[0] if self.param_groups else {}
        return (f"Lookahead(k={group.get('lookahead_k')}, alpha={group.get('lookahead_alpha')}, "
                f"{self.optimizer!r})")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            for parameter in group["params"]:
                if "slow_weights" not in self.state[parameter]:
                    self.state[parameter]["slow_weights"] = parameter.detach().clone()
        with torch.enable_grad():
            loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                for parameter in group["params"]:
                    slow = self.state[parameter]["slow_weights"]
                    slow.lerp_(parameter, group["lookahead_alpha"])  # exact for alpha = 1
                    parameter.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._sharing_inner_groups:  # Optimizer.__init__ adding the inner optimizer's own groups
            return super().add_param_group(param_group)
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        state_dict = self.optimizer.state_dict()
        state = dict(state_dict["state"])
        index = 0
        for group in self.param_groups:
            for parameter in group["params"]:
                if "slow_weights" in self.state.get(parameter, {}):
                    slow_weights = self.state[parameter]["slow_weights"]
                    state[index] = {**state.get(index, {}), "lookahead_slow_weights": slow_weights}
                index += 1
        return {**state_dict, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        inner_state, slow_weights = {}, {}
        for index, values in state_dict["state"].items():
            values = dict(values)
            if "lookahead_slow_weights" in values:
                slow_weights[int(index)] = values.pop("lookahead_slow_weights")
            if values:
                inner_state[index] = values
        self.optimizer.load_state_dict({**state_dict, "state": inner_state})
        self.param_groups = self.optimizer.param_groups  # loading replaced the inner group dicts
        parameters = [parameter for group in self.param_groups for parameter in group["params"]]
        self.state.clear()
        for index, tensor in slow_weights.items():
            parameter = parameters[index]
            self.state[parameter]["slow_weights"] = tensor.to(device=parameter.device, dtype=parameter.dtype).clone()


def check_optimizer(name: str, lookahead_k: int = 5, lookahead_alpha: float = 0.5) -> None:
    """Refuse an unknown ``--optimizer`` or Lookahead settings out of range, before any work."""
    if name not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}.")
    if name.startswith("lookahead_"):
        if not isinstance(lookahead_k, int) or isinstance(lookahead_k, bool) or lookahead_k < 1:
            raise ValueError(
                f"--lookahead-k must be a positive integer (fast steps per slow step), got {lookahead_k!r}."
            )
        if not 0.0 < lookahead_alpha <= 1.0:
            raise ValueError(f"--lookahead-alpha must be in (0, 1], got {lookahead_alpha!r}.")


def optimizer_cls_and_kwargs(name: str, args: Any, lookahead_k: int = 5, lookahead_alpha: float = 0.5
                             ) -> tuple[type[Optimizer], dict[str, Any]] | None:
    """What ``Trainer(optimizer_cls_and_kwargs=...)`` needs for ``--optimizer name``; None for ``adamw``
    (Trainer's default). Learning rate, betas and epsilon come from the ``TrainingArguments`` ``args``."""
    check_optimizer(name, lookahead_k, lookahead_alpha)
    if name == "adamw":
        return None
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                              "eps": args.adam_epsilon}
    inner = name.removeprefix("lookahead_")
    if inner == "radam":
        inner_class: type[Optimizer] = torch.optim.RAdam
        kwargs["decoupled_weight_decay"] = True
    else:
        inner_class = torch.optim.AdamW
    if not name.startswith("lookahead_"):
        return inner_class, kwargs
    return Lookahead, {"optimizer_class": inner_class, "k": lookahead_k, "alpha": lookahead_alpha, **kwargs}
