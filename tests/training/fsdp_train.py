"""Two CPU processes over gloo train effzoo models sharded with FSDP2 (``fully_shard``) and with DDP.

``python tests/training/fsdp_train.py OUTPUT_DIR`` spawns two ranks that run every scenario of
:data:`SCENARIOS` in turn and write, per scenario, what ``tests/training/test_fsdp.py`` checks:
``OUTPUT_DIR/<scenario>/rank<R>.json`` (losses, the parameters each rank holds, its buffers'
checksum) and, from rank 0, the gathered checkpoint (``checkpoint/``, saved with
``save_pretrained``) with the sharded model's outputs on fixed inputs (``outputs.pt``).

accelerate turns FSDP on only for GPU-like distributed types, so under gloo ``accelerate launch
--use_fsdp`` stays DDP; this script shards the model itself, as ``docs/distributed.md`` describes:
one ``fully_shard`` per unit of :func:`fsdp_units`, then the root.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import TINY

WORLD_SIZE = 2
STEPS = 4
LEARNING_RATE = 1e-2
BATCH, LENGTH = 8, 16

@dataclass(frozen=True)
class Scenario:
    """One model trained on two ranks: its variant, config overrides, and how it is distributed."""

    variant: str
    overrides: dict[str, Any] = field(default_factory=dict)
    parallel: str = "fsdp"  # "fsdp" (fully_shard) or "ddp" (DistributedDataParallel)
    ddp_options: dict[str, Any] = field(default_factory=dict)


REDRAWN_FEATURES = {"num_random_features": 16, "feature_redraw_interval": 2}  # redrawn at step 2 of 4

SCENARIOS: dict[str, Scenario] = {
    "full": Scenario("full"),
    "performer": Scenario("performer", REDRAWN_FEATURES),
    "longformer": Scenario("longformer", {"attention_window": 4, "dense_attention_below": 0}),
    "moe": Scenario("full", {"num_experts": 4}),
    "reversible": Scenario("full", {"reversible": True}),
    "chunked": Scenario("full", {"chunk_size_feed_forward": 4}),
    # accelerate's DDP default, then Trainer's (find_unused_parameters=True without checkpointing).
    "ddp-reversible": Scenario("full", {"reversible": True}, "ddp"),
    "ddp-reversible-find-unused": Scenario("full", {"reversible": True}, "ddp", {"find_unused_parameters": True}),
    # Every expert takes part in every backward, as DDP expects, even one that no token chose.
    "ddp-moe": Scenario("full", {"num_experts": 4}, "ddp"),
    # DDP broadcasts rank 0's buffers before each forward; the redraw happens inside it.
    "ddp-performer": Scenario("performer", REDRAWN_FEATURES, "ddp"),
}


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules to ``fully_shard`` before the root, innermost first: every module whose class the
    model names in ``_no_split_modules`` (the embeddings and each layer; a reversible model names its
    encoder instead), except a module holding a parameter tied to one outside it (the word embeddings
    tied to a language model's decoder), which stays in its parent's unit, since FSDP2 keeps a tied
    parameter in one group."""
    no_split = set(model._no_split_modules)
    units = [module for module in model.modules() if type(module).__name__ in no_split]
    return [module for module in units if not _shares_parameters_outside(module, model)]


def _shares_parameters_outside(module: nn.Module, model: nn.Module) -> bool:
    prefix = next(name for name, candidate in model.named_modules() if candidate is module)
    inside = {id(parameter) for parameter in module.parameters()}
    return any(id(parameter) in inside and not name.startswith(f"{prefix}.")
               for name, parameter in model.named_parameters(remove_duplicate=False))


def build_model(scenario: Scenario) -> nn.Module:
    """The scenario's tiny masked LM, seeded: every rank builds the same initial weights (FSDP2 and
    DDP both start from them; neither is asked to broadcast rank 0's)."""
    from transformers import AutoModelForMaskedLM

    from effzoo.variants import get_variant

    torch.manual_seed(0)
    config = get_variant(scenario.variant).config_class(**TINY, **scenario.overrides)
    return AutoModelForMaskedLM.from_config(config)


def training_batch(rank: int) -> torch.Tensor:
    """This rank's half of one fixed batch; the labels are the inputs (a memorisable objective)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, TINY["vocab_size"], (BATCH, LENGTH), generator=generator)
    return input_ids[rank::WORLD_SIZE].contiguous()


def evaluation_inputs() -> torch.Tensor:
    return torch.randint(5, TINY["vocab_size"], (2, LENGTH), generator=torch.Generator().manual_seed(2))


def buffers_checksum(model: nn.Module) -> list[float]:
    """Sum of every floating-point buffer (random features included), rounded for JSON."""
    return [float(buffer.double().sum()) for buffer in model.buffers() if buffer.is_floating_point()]


def parameters_held(model: nn.Module) -> list[dict[str, Any]]:
    """Per parameter: its name, whether it is a sharded DTensor, the elements held here and in all."""
    from torch.distributed.tensor import DTensor

    held = []
    for name, parameter in model.named_parameters():
        sharded = isinstance(parameter, DTensor)
        local = parameter.to_local() if sharded else parameter
        held.append({"name": name, "sharded": sharded, "local_numel": local.numel(), "numel": parameter.numel(),
                     "local_shape": list(local.shape), "shape": list(parameter.shape)})
    return held


def train(model: nn.Module, batches: list[torch.Tensor], distributed: bool) -> list[float]:
    """:data:`STEPS` AdamW steps, each on the mean loss of ``batches``; the losses (averaged over the
    ranks when ``distributed``: each rank holds its own half of the batch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    losses = []
    model.train()
    for _ in range(STEPS):
        loss = sum(model(input_ids=batch, labels=batch).loss for batch in batches) / len(batches)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean)
            mean /= WORLD_SIZE
        losses.append(mean.item())
    return losses


def run_fsdp(scenario: Scenario, rank: int, output: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model = build_model(scenario)
    units = fsdp_units(model)
    unit_classes = sorted({type(unit).__name__ for unit in units})
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    held = parameters_held(model)
    losses = train(model, [training_batch(rank)], distributed=True)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=evaluation_inputs()).logits
    full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model.save_pretrained(output / "checkpoint", state_dict=full_state)
        torch.save({"input_ids": evaluation_inputs(), "logits": logits}, output / "outputs.pt")
    return {"losses": losses, "parameters": held, "buffers": buffers_checksum(model),
            "units": unit_classes,
            "all_units_sharded": all(isinstance(unit, FSDPModule) for unit in [*units, model])}


def run_ddp(scenario: Scenario, rank: int, output: Path) -> dict[str, Any]:
    model = build_model(scenario)
    ddp = nn.parallel.DistributedDataParallel(model, **scenario.ddp_options)
    losses = train(ddp, [training_batch(rank)], distributed=True)
    with torch.no_grad():
        checksum = float(sum(parameter.double().sum() for parameter in model.parameters()))
    return {"losses": losses, "buffers": buffers_checksum(model), "parameters_checksum": checksum}


def run_rank(rank: int, init_method: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        for name, scenario in SCENARIOS.items():
            directory = Path(output) / name
            directory.mkdir(parents=True, exist_ok=True)
            run = run_fsdp if scenario.parallel == "fsdp" else run_ddp
            result = run(scenario, rank, directory)
            (directory / f"rank{rank}.json").write_text(json.dumps(result))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python tests/training/fsdp_train.py OUTPUT_DIR")
    output = Path(argv[0])
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as rendezvous:
        init_method = f"file://{rendezvous}/init"  # a file, not a port: no clash with other runs
        mp.start_processes(run_rank, args=(init_method, str(output)), nprocs=WORLD_SIZE, start_method="spawn")


if __name__ == "__main__":
    main(sys.argv[1:])
