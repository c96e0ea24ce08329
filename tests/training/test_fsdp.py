"""Training past one process: FSDP2 really sharded over gloo, DDP's traps, and the gathered checkpoint.

One run of ``fsdp_train.py`` (two spawned ranks, every scenario in turn) feeds every test here.
Each distributed run is compared with the same training in this one process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForMaskedLM

import effzoo  # noqa: F401 - registers the variants with the Auto classes
from tests.training.fsdp_train import SCENARIOS, STEPS, WORLD_SIZE, Scenario, build_model, train, training_batch

SCRIPT = Path(__file__).with_name("fsdp_train.py")
FSDP = [name for name, scenario in SCENARIOS.items() if scenario.parallel == "fsdp"]
TIMEOUT_S = 300


def _fully_shard_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


pytestmark = pytest.mark.skipif(
    not _fully_shard_available(),
    reason=f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard or no gloo backend: "
           "FSDP2 cannot shard on the CPU here",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    result = subprocess.run([sys.executable, str(SCRIPT), str(output)], capture_output=True, text=True, env=env,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return output


def ranks(runs: Path, name: str) -> list[dict]:
    return [json.loads((runs / name / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def one_process_losses(name: str) -> list[float]:
    """The same steps in one process: the whole batch at once, or, for a mixture of experts (whose
    capacity and balance loss are statistics of the batch a rank routes), each rank's half apart."""
    scenario = SCENARIOS[name]
    halves = [training_batch(rank) for rank in range(WORLD_SIZE)]
    batches = halves if scenario.overrides.get("num_experts") else [torch.cat(halves)]
    return train(build_model(scenario), batches, distributed=False)


@pytest.mark.parametrize("name", FSDP)
def test_each_rank_holds_only_its_shard_of_every_parameter(runs, name):
    held = [rank["parameters"] for rank in ranks(runs, name)]
    assert all(parameter["sharded"] for rank in held for parameter in rank), "a parameter was left unsharded"
    for parameters in zip(*held):
        full = parameters[0]
        assert sum(parameter["local_numel"] for parameter in parameters) == full["numel"]
        rows = full["shape"][0]
        for rank, parameter in enumerate(parameters):  # dim 0 cut in WORLD_SIZE, the last shard the rest
            expected = min(math.ceil(rows / WORLD_SIZE), max(0, rows - rank * math.ceil(rows / WORLD_SIZE)))
            assert parameter["local_shape"][0] == expected, (full["name"], rank, parameter["local_shape"])
    total = sum(parameter["numel"] for parameter in held[0])
    for rank in held:
        assert 0.45 < sum(parameter["local_numel"] for parameter in rank) / total < 0.55


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_both_ranks_see_the_losses_of_one_process_and_they_fall(runs, name):
    first, second = (rank["losses"] for rank in ranks(runs, name))
    assert first == second and len(first) == STEPS
    assert first == pytest.approx(one_process_losses(name), rel=1e-4)
    assert first[-1] < first[0] - 0.3


@pytest.mark.parametrize("name", FSDP)
def test_the_gathered_checkpoint_reloads_in_one_process_with_the_sharded_outputs(runs, name):
    model, info = AutoModelForMaskedLM.from_pretrained(runs / name / "checkpoint", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sharded = torch.load(runs / name / "outputs.pt")
    with torch.no_grad():
        logits = model.eval()(input_ids=sharded["input_ids"]).logits
    torch.testing.assert_close(logits, sharded["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["performer", "ddp-performer"])
def test_redrawn_random_features_stay_identical_on_both_ranks(runs, name):
    first, second = (rank["buffers"] for rank in ranks(runs, name))
    assert first == second
    initial = [float(buffer.double().sum()) for buffer in build_model(SCENARIOS[name]).buffers()
               if buffer.is_floating_point()]
    assert first != initial, "the features were never redrawn: the test would not see ranks drift apart"


@pytest.mark.parametrize("name", [name for name, scenario in SCENARIOS.items() if scenario.parallel == "ddp"])
def test_ddp_keeps_the_ranks_parameters_identical(runs, name):
    first, second = (rank["parameters_checksum"] for rank in ranks(runs, name))
    assert first == second


def test_units_are_the_layers_or_a_reversible_encoder_and_tied_embeddings_stay_with_the_root(runs):
    assert ranks(runs, "full")[0]["units"] == ["EffzooLayer"]
    assert ranks(runs, "moe")[0]["units"] == ["EffzooMoELayer"]
    assert ranks(runs, "reversible")[0]["units"] == ["EffzooEncoder"]
    assert all(rank["all_units_sharded"] for name in FSDP for rank in ranks(runs, name))


@pytest.mark.parametrize("overrides", [{}, {"num_experts": 4}, {"num_experts": 4, "encoder_sparse_step": 2},
                                       {"reversible": True}])
def test_no_split_modules_names_the_embeddings_and_every_layer_class(overrides):
    model = build_model(Scenario("full", overrides))
    layer_classes = {type(layer).__name__ for layer in model.bert.encoder.layer}
    units = {type(module).__name__ for module in model.modules()} & set(model._no_split_modules)
    if overrides.get("reversible"):  # the layers run inside the encoder's one autograd function
        assert units == {"EffzooEmbeddings", "EffzooEncoder"} and model.bert._no_split_modules == model._no_split_modules
    else:
        assert units == {"EffzooEmbeddings", *layer_classes}


def test_the_documented_accelerate_configs_load_and_name_effzoo_classes():
    from accelerate.commands.config.config_args import ClusterConfig

    import effzoo.modeling.backbone as backbone

    configs = Path(__file__).parents[2] / "docs" / "accelerate"
    fsdp = ClusterConfig.from_yaml_file(configs / "fsdp-multi-gpu.yaml")
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    for name in fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert isinstance(getattr(backbone, name, None), type), name
    zero = ClusterConfig.from_yaml_file(configs / "deepspeed-zero3-multi-node.yaml")
    assert zero.distributed_type == "DEEPSPEED" and zero.deepspeed_config["zero_stage"] == 3
    assert zero.num_machines > 1
