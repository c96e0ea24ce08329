"""Lookahead and RAdam: step-by-step equalities, Trainer checkpoints mid-cycle, DDP, and bad input."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertModel, Trainer, TrainerCallback, TrainingArguments

import effzoo
from effzoo.cli import main
from effzoo.training.optimizers import Lookahead, optimizer_cls_and_kwargs
from tests.conftest import TINY, save_tiny_checkpoint
from tests.training.test_finetune import run, words

INNER = {"adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}


def problem():
    """A small model and a deterministic loss with a different gradient at each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    inputs = torch.randn(30, 16, 4)
    return model, lambda step: model(inputs[step]).pow(2).mean()


def train(loss_at, optimizer, start, steps):
    for step in range(start, start + steps):
        optimizer.zero_grad()
        loss_at(step).backward()
        optimizer.step()


@pytest.mark.parametrize("inner", sorted(INNER))
def test_alpha_one_equals_the_inner_optimizer_step_for_step(inner):
    model, loss = problem()
    lookahead = Lookahead(model.parameters(), INNER[inner], k=3, alpha=1.0, lr=0.05)
    twin, twin_loss = problem()
    plain = INNER[inner](twin.parameters(), lr=0.05)
    for step in range(8):
        train(loss, lookahead, step, 1)
        train(twin_loss, plain, step, 1)
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b), step


def test_after_k_steps_the_slow_weights_are_the_papers_interpolation():
    k, alpha = 4, 0.3
    model, loss = problem()
    start = [p.detach().clone() for p in model.parameters()]
    lookahead = Lookahead(model.parameters(), torch.optim.AdamW, k=k, alpha=alpha, lr=0.05)
    twin, twin_loss = problem()
    plain = torch.optim.AdamW(twin.parameters(), lr=0.05)
    train(loss, lookahead, 0, k - 1)
    train(twin_loss, plain, 0, k - 1)
    for a, b in zip(model.parameters(), twin.parameters()):  # within a cycle: the inner trajectory
        assert torch.equal(a, b)
    train(loss, lookahead, k - 1, 1)
    train(twin_loss, plain, k - 1, 1)  # θ_k: k fast steps from φ₀ = θ₀
    for parameter, phi, theta in zip(model.parameters(), start, twin.parameters()):
        expected = phi + alpha * (theta.detach() - phi)  # φ₁ = φ₀ + α (θ_k − φ₀)
        torch.testing.assert_close(lookahead.state[parameter]["slow_weights"], expected, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(parameter.detach(), expected, atol=1e-7, rtol=1e-6)  # θ restarts from φ₁


def test_state_dict_resumes_in_the_middle_of_a_cycle_exactly():
    model, loss = problem()
    straight = Lookahead(model.parameters(), torch.optim.RAdam, k=5, alpha=0.5, lr=0.05)
    train(loss, straight, 0, 17)
    expected = [p.detach().clone() for p in model.parameters()]

    model, loss = problem()
    first = Lookahead(model.parameters(), torch.optim.RAdam, k=5, alpha=0.5, lr=0.05)
    train(loss, first, 0, 7)  # 7 = 5 + 2: in the middle of the second cycle
    saved = copy.deepcopy(first.state_dict())
    assert saved["param_groups"][0]["lookahead_step"] == 7 and "lookahead_slow_weights" in saved["state"][0]
    resumed = Lookahead(model.parameters(), torch.optim.RAdam, k=5, alpha=0.5, lr=0.05)
    resumed.load_state_dict(saved)
    train(loss, resumed, 7, 10)
    for parameter, value in zip(model.parameters(), expected):
        assert torch.equal(parameter, value)


def test_trainer_builds_it_through_its_optimizer_hook(tmp_path):
    model = effzoo.FullForSequenceClassification(effzoo.FullConfig(**TINY))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                             report_to=[])
    assert optimizer_cls_and_kwargs("adamw", args) is None  # Trainer's own default
    radam = Trainer(model=model, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("radam", args))
    assert isinstance(radam.create_optimizer(), torch.optim.RAdam)
    assert radam.optimizer.defaults["decoupled_weight_decay"] and radam.optimizer.defaults["lr"] == 1e-3
    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(
        "lookahead_radam", args, lookahead_k=7, lookahead_alpha=0.25))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.optimizer, torch.optim.RAdam)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]  # Trainer's groups
    assert optimizer.param_groups[0]["lookahead_k"] == 7 and optimizer.param_groups[0]["lookahead_alpha"] == 0.25


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


@pytest.fixture
def tiny_run(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "\n".join(f"{words(row)},{['sports', 'politics'][row % 2]}" for row in range(40)))
    return source, data


def test_trainer_checkpoint_in_the_middle_of_a_cycle_continues_exactly(tiny_run, tmp_path):
    source, data = tiny_run
    options = {"optimizer": "lookahead_radam", "lookahead_k": 3, "epochs": 2}
    run(source, tmp_path, data, output_dir=str(tmp_path / "straight"), **options)
    interrupted = str(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run(source, tmp_path, data, output_dir=interrupted, callbacks=[Interrupt()], **options)
    saved = torch.load(tmp_path / "interrupted" / "checkpoint-5" / "optimizer.pt", weights_only=True)
    assert saved["param_groups"][0]["lookahead_step"] == 5  # 5 = 3 + 2: mid-cycle
    run(source, tmp_path, data, output_dir=interrupted, resume_from_checkpoint=True, **options)
    a = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "straight").state_dict()
    b = effzoo.FullForSequenceClassification.from_pretrained(tmp_path / "interrupted").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_two_process_ddp_keeps_identical_slow_weights(tiny_run, tmp_path):
    source, data = tiny_run
    output = tmp_path / "out"
    script = Path(__file__).with_name("ddp_lookahead.py")
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(source), str(data), str(output)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["type"] == "Lookahead" and ranks[0]["steps"] >= 4
    assert ranks[0]["slow"] == ranks[1]["slow"] and ranks[0]["first"] == ranks[1]["first"]


def test_unknown_optimizer_is_a_value_error_naming_the_choices(tiny_run, tmp_path, capsys):
    source, data = tiny_run
    with pytest.raises(ValueError, match="--optimizer must be one of adamw, radam, lookahead_adamw, lookahead_radam; "
                                         "got 'sgd'"):
        run(source, tmp_path, data, optimizer="sgd")
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(ValueError, match="--lookahead-alpha must be in"):
        run(source, tmp_path, data, optimizer="lookahead_adamw", lookahead_alpha=0.0)
    assert main(["pretrain", str(source), "--optimizer", "adam", "--output", str(tmp_path / "p")]) == 2
    assert "--optimizer must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Lookahead k must be a positive integer"):
        Lookahead(torch.nn.Linear(2, 2).parameters(), k=0)
