"""Distillation and continued pre-training on tiny models, and the fidelity figures they report."""

import json

import pytest
import torch
from transformers import BertForMaskedLM, BertModel, TrainingArguments

import effzoo
from effzoo.training.distill import (
    DistillationTrainer,
    DistillConfig,
    distill,
    layer_matching_loss,
    select_trainable,
    sentence_loss,
)
from effzoo.training.fidelity import spearman
from effzoo.training.pretrain import PretrainConfig, pack_texts, pretrain
from tests.conftest import save_tiny_checkpoint


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(" ".join(f"w{(row * 5 + i) % 90}" for i in range(30)) for row in range(40)))
    return path


def test_spearman_and_layer_loss_follow_their_formulas():
    x = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.tensor([1.0, 3.0, 2.0, 0.0])) == pytest.approx(1 - 6 * (1 + 1 + 1 + 9) / (4 * 15))
    mask = torch.tensor([[1, 1, 0]])
    a, b = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    b[0, 2] = 100.0  # a padded position never counts
    assert layer_matching_loss([a, a], [b, b], mask) == pytest.approx(1.0)


def test_sentence_loss_compares_mean_pooled_real_tokens_by_angle():
    mask = torch.tensor([[1, 1, 0]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    student = torch.tensor([[[3.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]])
    # Pooled over real tokens: student (2.5, 0), teacher (0.5, 1) -> cosine 0.5 / sqrt(1.25).
    assert sentence_loss(student, teacher, mask) == pytest.approx(1 - 0.5 / 1.25 ** 0.5)
    assert sentence_loss(teacher * 7, teacher, mask) == pytest.approx(0.0, abs=1e-7)


def test_distilling_full_from_its_own_teacher_changes_nothing(tmp_path, text_file):
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher", hidden_dropout_prob=0.1)
    effzoo.convert(source, "full", tmp_path / "student", progress=False)
    results = distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"),
                                    output_dir=str(tmp_path / "out"), data=str(text_file), max_length=16,
                                    max_steps=3, eval_texts=4, progress=False, save_checkpoints=False))
    assert results["before"]["sentence_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert results["after"]["token_cosine"] == pytest.approx(1.0, abs=1e-6)  # zero loss: dropout is off
    assert json.loads((tmp_path / "out" / "effzoo_distill.json").read_text())["steps"] == 3


def test_the_sentence_term_changes_what_recovery_trains(tmp_path, text_file):
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "linear", tmp_path / "student", progress=False)

    def recovered(sentence_weight: float) -> dict:
        return distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"),
                                     output_dir=str(tmp_path / f"out-{sentence_weight}"), data=str(text_file),
                                     max_length=16, max_steps=3, eval_texts=4, select_every=0,
                                     sentence_weight=sentence_weight, progress=False, save_checkpoints=False))

    layers_only, with_sentence = recovered(0.0), recovered(100.0)
    assert layers_only["before"] == with_sentence["before"]
    assert layers_only["after"]["token_cosine"] != pytest.approx(with_sentence["after"]["token_cosine"], abs=1e-6)


def test_teacher_forcing_gives_each_layer_the_teachers_input(tmp_path):
    """A student whose first feed-forward differs: its own later layers see other inputs (a loss),
    but teacher-forced each attention sees the teacher's input and matches exactly (no loss)."""
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "full", tmp_path / "student", progress=False)
    teacher = BertModel.from_pretrained(source)
    student = effzoo.FullModel.from_pretrained(tmp_path / "student")
    with torch.no_grad():
        student.encoder.layer[0].output.dense.weight.normal_()
    inputs = {"input_ids": torch.randint(5, 90, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    inputs["attention_mask"][1, 9:] = 0

    def attention_loss(teacher_forced: bool) -> float:
        trainer = DistillationTrainer(model=student, args=TrainingArguments(str(tmp_path / "out"), report_to=[],
                                                                            use_cpu=True),
                                      teacher=teacher, hidden_weight=0.0, attention_weight=1.0, sentence_weight=0.0,
                                      teacher_forced=teacher_forced)
        return trainer.compute_loss(student.eval(), dict(inputs)).item()

    assert attention_loss(teacher_forced=False) > 1e-4
    assert attention_loss(teacher_forced=True) == pytest.approx(0.0, abs=1e-10)


def test_a_teacher_forced_stage_then_an_end_to_end_stage(tmp_path, text_file):
    """The two-stage recipe: feature maps alone, teacher-forced; then the whole model from that
    checkpoint, whose provenance already holds a fidelity record."""
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "hedgehog", tmp_path / "student", progress=False)
    common = dict(teacher=str(source), data=str(text_file), max_length=16, max_steps=3, eval_texts=4,
                  progress=False, save_checkpoints=False)
    first = distill(DistillConfig(student=str(tmp_path / "student"), output_dir=str(tmp_path / "stage1"),
                                  teacher_forced=True, trainable="mechanism", learning_rate=1e-2, select_every=0,
                                  **common))
    converted = effzoo.HedgehogModel.from_pretrained(tmp_path / "student").state_dict()
    stage1 = effzoo.HedgehogModel.from_pretrained(tmp_path / "stage1").state_dict()
    moved = {name for name in converted if not torch.equal(converted[name], stage1[name])}
    assert moved and all(".mechanism." in name for name in moved)
    second = distill(DistillConfig(student=str(tmp_path / "stage1"), output_dir=str(tmp_path / "stage2"), **common))
    assert second["before"] == first["after"]
    provenance = json.loads((tmp_path / "stage2" / "effzoo_provenance.json").read_text())
    assert provenance["fidelity"]["metrics"] == second["after"]
    assert provenance["source"] == json.loads((tmp_path / "student" / "effzoo_provenance.json").read_text())["source"]
    with pytest.raises(ValueError, match="sentence_weight does not apply"):
        distill(DistillConfig(student=str(tmp_path / "student"), output_dir=str(tmp_path / "never"),
                              teacher_forced=True, sentence_weight=1.0, **common))
    assert not (tmp_path / "never").exists()


def test_bf16_runs_both_training_forwards_under_autocast_and_measures_in_float32(tmp_path, text_file):
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "linear", tmp_path / "student", progress=False)
    calls = []  # (encoder class, training?, autocast dtype or None) of every forward of either model

    def record(module, args):
        if type(module).__name__ in ("BertEncoder", "EffzooEncoder"):
            calls.append((type(module).__name__, module.training,
                          torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"), output_dir=str(tmp_path / "out"),
                              data=str(text_file), max_length=16, max_steps=2, eval_texts=4, select_every=0,
                              bf16=True, progress=False, save_checkpoints=False))
    finally:
        handle.remove()
    under_autocast = sorted((name, training) for name, training, dtype in calls if dtype == torch.bfloat16)
    assert under_autocast == [("BertEncoder", False)] * 2 + [("EffzooEncoder", True)] * 2  # the two training steps
    measuring = {(name, training) for name, training, dtype in calls if dtype is None}  # fidelity before and after
    assert measuring == {("BertEncoder", False), ("EffzooEncoder", False)}
    assert all(dtype in (None, torch.bfloat16) for *_, dtype in calls)


def test_trainable_parts_are_chosen_by_name(tiny_full_config):
    model = effzoo.FullModel(tiny_full_config)
    attention = select_trainable(model, "attention")
    assert 0 < attention < sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad == (".attention." in n) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="no mechanism parameters"):
        select_trainable(model, "mechanism")
    with pytest.raises(ValueError, match="trainable must be one of"):
        select_trainable(model, "everything")


def test_packing_fills_whole_blocks(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    packed = pack_texts(["w1 w2 w3", "w4 w5 w6 w7"], tokenizer, block_length=4)
    assert packed["input_ids"] == [[2, 6, 7, 8], [3, 2, 9, 10]]  # [CLS] w1 w2 w3 | [SEP] [CLS] w4 w5; tail dropped


def test_pretrain_extends_positions_and_lowers_the_loss(tmp_path, text_file):
    source = save_tiny_checkpoint(BertForMaskedLM, tmp_path / "bert")
    results = pretrain(PretrainConfig(model=str(source), convert_to="full", output_dir=str(tmp_path / "out"),
                                      data=str(text_file), max_length=96, max_steps=12, batch_size=4,
                                      learning_rate=2e-3, progress=False, logging_steps=1))
    assert results["max_length"] == 96 and results["train_blocks"] > 0
    model = effzoo.FullForMaskedLM.from_pretrained(tmp_path / "out")
    assert model.config.max_position_embeddings == 96
    assert results["perplexity"] == pytest.approx(torch.tensor(results["eval_loss"]).exp().item(), rel=1e-4)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_a_time_budget_schedules_the_learning_rate_on_the_clock(tmp_path, text_file, schedule):
    """Under a time budget max_steps is a cap, so no schedule may be laid over it (it would never warm up):
    a short warm-up, then the rate holds or falls with the time left (of 30 minutes: barely, here)."""
    from effzoo.training.distill import TIME_BUDGET_WARMUP_STEPS

    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "full", tmp_path / "student", progress=False)
    steps = TIME_BUDGET_WARMUP_STEPS + 12  # logged every 10 steps: warming up at 10, past it at 30
    distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"), output_dir=str(tmp_path / "out"),
                          data=str(text_file), max_length=16, max_steps=steps, time_budget_minutes=30.0,
                          learning_rate=1e-3, schedule=schedule, eval_texts=4, progress=False))
    (state,) = (tmp_path / "out").glob("checkpoint-*/trainer_state.json")
    rates = {entry["step"]: entry["learning_rate"] for entry in json.loads(state.read_text())["log_history"]
             if "learning_rate" in entry}
    assert rates[10] < 0.6e-3
    if schedule == "constant":
        assert rates[30] == pytest.approx(1e-3)
    else:
        assert 0.9e-3 < rates[30] < 1e-3


def test_with_minutes_the_time_budget_rules_and_only_max_steps_caps_the_steps(tmp_path, monkeypatch):
    """`effzoo distill --minutes 10` trains for ten minutes: the Trainer gets no step cap unless --max-steps
    is given; without --minutes the default cap applies."""
    from effzoo.cli import main
    from effzoo.training import distill as distill_module

    given = []
    monkeypatch.setattr(distill_module, "distill", lambda config: given.append(config) or {})
    command = ["distill", "--teacher", "t", "--student", "s", "--output", str(tmp_path / "out")]
    for extra in (["--minutes", "10"], ["--minutes", "10", "--max-steps", "50"], [], ["--max-steps", "7"]):
        assert main(command + extra) == 0
    arguments = [distill_module.training_arguments(config) for config in given]
    uncapped, capped, default, given_cap = (args.max_steps for args in arguments)
    assert uncapped > 10**12  # not reached in any run: the clock ends it
    assert (capped, default, given_cap) == (50, distill_module.DEFAULT_MAX_STEPS, 7)
    # The uncapped run checkpoints by the clock (TimeBudget), the others at each quarter of their steps.
    assert [args.save_strategy.value for args in arguments] == ["no", "steps", "steps", "steps"]
    assert [args.save_steps for args in arguments[1:]] == [12, distill_module.DEFAULT_MAX_STEPS // 4, 1]


def test_a_run_with_no_step_cap_checkpoints_by_the_clock():
    from transformers import TrainerControl

    from effzoo.training.distill import TimeBudget

    now = [0.0]
    budget = TimeBudget(minutes=4, clock=lambda: now[0], checkpoints=4)  # a checkpoint a minute
    seen = []
    for seconds in [30, 59, 61, 62, 150, 190, 241]:
        now[0] = seconds
        control = budget.on_step_end(None, None, TrainerControl())
        seen.append((control.should_save, control.should_training_stop))
    no, save, save_and_stop = (False, False), (True, False), (True, True)
    assert seen == [no, no, save, no, save, save, save_and_stop]


def test_a_time_budget_alone_ends_a_recovery(tmp_path, text_file):
    """No max_steps: the clock stops the run (1.8 s here), and saves its last checkpoint."""
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "full", tmp_path / "student", progress=False)
    results = distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"),
                                    output_dir=str(tmp_path / "out"), data=str(text_file), max_length=16,
                                    time_budget_minutes=0.03, eval_texts=4, select_every=0, progress=False))
    assert results["steps"] > 0 and results["wall_minutes"] >= 0.02  # the budget's clock starts before training
    (checkpoint,) = (tmp_path / "out").glob("checkpoint-*")  # the last of the clock's checkpoints
    assert checkpoint.name == f"checkpoint-{results['steps']}"


def test_an_unknown_schedule_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="schedule must be one of"):
        distill(DistillConfig(teacher="unused", student="unused", output_dir=str(tmp_path / "out"), schedule="cosine"))
    assert not (tmp_path / "out").exists()


def test_the_linear_time_budget_schedule_reaches_zero_at_the_end_of_the_budget():
    from effzoo.training.distill import TimeBudget

    now = [100.0]
    budget = TimeBudget(minutes=10, clock=lambda: now[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = budget.schedule(optimizer, "linear", warmup_steps=4)
    factors = {}
    for step, seconds in enumerate([0, 60, 120, 150, 300, 540, 600, 700]):
        now[0] = 100.0 + seconds
        factors[step] = scheduler.lr_lambdas[0](step)
    assert factors[0] == 0.0 and factors[2] == pytest.approx(0.5 * 0.8)  # warming up, 2 of 10 minutes spent
    assert factors[4] == pytest.approx(0.5) and factors[5] == pytest.approx(0.1)  # half the budget, then 9 minutes
    assert factors[6] == factors[7] == 0.0  # the budget is spent


def test_the_mechanism_can_train_at_its_own_learning_rate(tmp_path, text_file):
    """Hedgehog's new feature maps at 1e-2 while the pretrained weights stay (here at rate 0)."""
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "hedgehog", tmp_path / "student", progress=False)
    distill(DistillConfig(teacher=str(source), student=str(tmp_path / "student"), output_dir=str(tmp_path / "out"),
                          data=str(text_file), max_length=16, max_steps=3, learning_rate=0.0,
                          mechanism_learning_rate=1e-2, eval_texts=4, progress=False, save_checkpoints=False))
    before = effzoo.HedgehogModel.from_pretrained(tmp_path / "student").state_dict()
    after = effzoo.HedgehogModel.from_pretrained(tmp_path / "out").state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(".mechanism." in name for name in moved)
    assert len(moved) == len([name for name in before if ".mechanism." in name])


@pytest.mark.parametrize("select_every", [2, 0], ids=["best-kept", "last-kept"])
def test_recovery_keeps_the_best_weights_on_validation_texts(tmp_path, select_every):
    """A ruinous learning rate: with selection the converted weights (step 0) win and are saved."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(f"w{(row * 7 + i) % 90}" for i in range(30)) for row in range(200)))
    source = save_tiny_checkpoint(BertModel, tmp_path / "teacher")
    effzoo.convert(source, "local", tmp_path / "student", progress=False, overrides={"block_size": 4})
    results = distill(DistillConfig(
        teacher=str(source), student=str(tmp_path / "student"), output_dir=str(tmp_path / "out"), data=str(texts),
        max_length=32, max_steps=4, learning_rate=0.5, eval_texts=4, select_every=select_every, selection_texts=8,
        progress=False, save_checkpoints=False,
    ))
    if select_every:
        assert [entry["step"] for entry in results["selection"]] == [0, 2, 4]
        assert results["selected_step"] == 0
        assert results["after"] == results["before"]
    else:
        assert results["after"]["sentence_cosine"] < results["before"]["sentence_cosine"] - 1e-3
