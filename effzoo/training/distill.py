"""``effzoo distill``: bring a converted model back to its teacher on unlabelled text.

Swapping the attention of a pretrained BERT keeps its weights but changes what each layer
computes. This recipe continues training the converted *student* to reproduce its *teacher*
layer by layer — the attention output of every layer and the hidden state after it (the
attention-transfer step of Hedgehog, Zhang et al. 2024, and LoLCATs, Zhang et al. 2025) —
and, with ``sentence_weight``, its output too: the mean-pooled sentence embedding of the last
hidden state (the "logits" of a sentence-embedding teacher such as all-MiniLM-L6-v2). On real
text, with Transformers' ``Trainer``. It works for any variant.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoModel, AutoTokenizer, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from ..attention.base import AttentionMechanism
from ..checkpoints.location import resolve_source
from ..checkpoints.provenance import read_provenance, record_provenance
from ..output_folders import check_output_dir
from .data import dataset_names, load_data
from .fidelity import Fidelity, mean_pool, measure_fidelity

TRAINABLE = ("all", "attention", "mechanism")
SCHEDULES = ("linear", "constant")

logger = transformers.logging.get_logger(__name__)


#: Warm-up steps of a time-budgeted recovery.
TIME_BUDGET_WARMUP_STEPS = 20

#: Steps of a recovery given neither ``max_steps`` nor a time budget.
DEFAULT_MAX_STEPS = 200
#: The ``max_steps`` Trainer gets under a time budget with no ``max_steps``: it needs a count, and this one is
#: never reached, so the budget alone ends the run.
NO_STEP_CAP = sys.maxsize
#: Checkpoints a run saves, evenly over its steps (or, with no step cap, over its time budget).
CHECKPOINTS_PER_RUN = 4


@dataclass
class DistillConfig:
    """A distillation run. ``student`` is an effzoo checkpoint; ``teacher`` the model it came from.

    With ``time_budget_minutes`` the clock ends the run, and ``max_steps`` caps it only when given;
    without, it runs ``max_steps`` steps (``DEFAULT_MAX_STEPS`` when not given).
    """

    teacher: str
    student: str
    output_dir: str
    data: str = "bbc_news"
    text_column: str = "text"
    max_length: int = 256
    max_steps: int | None = None
    time_budget_minutes: float | None = None
    batch_size: int = 4
    learning_rate: float = 1e-4
    #: "linear": after the warm-up the rate falls linearly to zero at the end of ``max_steps``, or
    #: of the time budget when there is one (measured in wall time); "constant": it holds.
    schedule: str = "linear"
    trainable: str = "all"
    #: The mechanism's own parameters (Hedgehog's feature maps) at this rate; see docs/fidelity.md.
    mechanism_learning_rate: float | None = None
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    #: Weight of 1 − cosine of the mean-pooled sentence embeddings (0: layers only); see docs/fidelity.md.
    sentence_weight: float = 0.0
    #: Attention transfer (LoLCATs' first stage): each layer takes the teacher's input; see docs/fidelity.md.
    teacher_forced: bool = False
    #: Training forwards under bfloat16 autocast, weights and measurements float32; see docs/fidelity.md.
    bf16: bool = False
    eval_texts: int = 64
    #: Every ``select_every`` steps the student's fidelity on ``selection_texts`` held-out texts
    #: (never the ``eval_texts``) is measured, and the best weights, the converted ones included,
    #: are what is saved: recovery never leaves the student worse than it found it. 0: off.
    select_every: int = 50
    selection_texts: int = 32
    seed: int = 0
    overwrite: bool = False
    resume_from_checkpoint: str | bool | None = None
    save_checkpoints: bool = True
    progress: bool = True


class LayerOutputs:
    """Forward hooks that collect each layer's attention-context output while ``recording``
    (the training forward passes, not the fidelity measurements between them)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        self.recording = False
        base = model.base_model
        self._handles = [layer.attention.self.register_forward_hook(self._keep) for layer in base.encoder.layer]

    def _keep(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.recording:
            self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def pop(self) -> list[torch.Tensor]:
        outputs, self.outputs = self.outputs, []
        return outputs


def layer_matching_loss(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the mean squared error on real tokens."""
    real = attention_mask.bool()
    losses = [F.mse_loss(s[real].float(), t[real].float()) for s, t in zip(student_states, teacher_states)]
    return torch.stack(losses).mean()


def sentence_loss(student_state: torch.Tensor, teacher_state: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 − the cosine similarity of the two mean-pooled sentence embeddings."""
    student = mean_pool(student_state.float(), attention_mask)
    teacher = mean_pool(teacher_state.float(), attention_mask)
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


class TeacherInputs:
    """Forward pre-hooks that give each layer's attention ``inputs[layer]`` in place of its own
    input while ``inputs`` is set (the teacher-forced training passes only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs: tuple[torch.Tensor, ...] | None = None
        layers = model.base_model.encoder.layer
        self._handles = [layer.attention.self.register_forward_pre_hook(self._replacer(index), with_kwargs=True)
                         for index, layer in enumerate(layers)]

    def _replacer(self, index: int) -> Callable:
        def replace(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            return None if self.inputs is None else ((self.inputs[index], *args[1:]), kwargs)

        return replace


class DistillationTrainer(Trainer):
    """``Trainer`` whose loss is the student's distance to a frozen teacher: layer by layer, and
    between the two sentence embeddings."""

    def __init__(self, *args: Any, teacher: torch.nn.Module, hidden_weight: float, attention_weight: float,
                 sentence_weight: float, teacher_forced: bool = False, bf16: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.sentence_weight = sentence_weight
        self.bf16 = bf16
        self.teacher_inputs = TeacherInputs(self.model) if teacher_forced else None
        self.student_attention = LayerOutputs(self.model)
        self.teacher_attention = LayerOutputs(self.teacher)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key in ("input_ids", "attention_mask")}
        self.teacher.to(inputs["input_ids"].device)
        self.student_attention.recording = self.teacher_attention.recording = True
        # Autocast here rather than Trainer's ``bf16``: Accelerate would wrap the student's forward for
        # good, and the fidelity measurements between steps would run in bfloat16 too.
        autocast = torch.autocast(inputs["input_ids"].device.type, dtype=torch.bfloat16, enabled=self.bf16)
        try:
            with torch.no_grad(), autocast:
                teacher = self.teacher(**inputs, output_hidden_states=True)
            if self.teacher_inputs is not None:
                self.teacher_inputs.inputs = teacher.hidden_states[:-1]
            with autocast:
                student = model(**inputs, output_hidden_states=self.teacher_inputs is None)
        finally:
            self.student_attention.recording = self.teacher_attention.recording = False
            if self.teacher_inputs is not None:
                self.teacher_inputs.inputs = None
        mask = inputs["attention_mask"]
        attention = layer_matching_loss(self.student_attention.pop(), self.teacher_attention.pop(), mask)
        if self.teacher_inputs is not None:
            loss = self.attention_weight * attention
            return (loss, student) if return_outputs else loss
        hidden = layer_matching_loss(student.hidden_states[1:], teacher.hidden_states[1:], mask)
        loss = self.hidden_weight * hidden + self.attention_weight * attention
        if self.sentence_weight:
            sentence = sentence_loss(student.hidden_states[-1], teacher.hidden_states[-1], mask)
            loss = loss + self.sentence_weight * sentence
        return (loss, student) if return_outputs else loss


class TimeBudget(TrainerCallback):
    """Stops training once ``minutes`` of wall time have passed (checked after every step), and
    gives the learning-rate schedules that fit the budget (``max_steps``, if any, is then only a cap).

    ``checkpoints`` saves that many checkpoints evenly over the budget, for a run that no step count ends.
    """

    def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter, checkpoints: int = 0) -> None:
        self.seconds = minutes * 60
        self.clock = clock
        self.started = clock()
        self.checkpoints, self.saved = checkpoints, 0

    def fraction_left(self) -> float:
        """The share of the budget not yet spent, 1 → 0."""
        return max(0.0, 1.0 - (self.clock() - self.started) / self.seconds)

    def schedule(self, optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int) -> LambdaLR:
        """Linear warm-up over ``warmup_steps``, then the rate held ("constant") or falling linearly
        with the time left to zero at the end of the budget ("linear")."""
        def factor(step: int) -> float:
            warmup = min(1.0, step / warmup_steps)
            return warmup * (self.fraction_left() if kind == "linear" else 1.0)

        return LambdaLR(optimizer, factor)

    def on_step_end(self, args, state, control, **kwargs):
        spent = (self.clock() - self.started) / self.seconds
        if spent > 1:
            control.should_training_stop = True
        due = int(min(spent, 1.0) * self.checkpoints)
        if due > self.saved:
            control.should_save, self.saved = True, due
        return control


class UncappedProgress(ProgressCallback):
    """Trainer's progress bar without a total, for a run that the clock ends rather than a step count."""

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=None, dynamic_ncols=True)
        self.current_step = 0


class KeepBest(TrainerCallback):
    """Measures the student every ``every`` steps (and before the first and after the last) with
    ``measure``, and puts the weights with the best sentence-embedding cosine back at the end."""

    def __init__(self, measure: Callable[[], Fidelity], every: int) -> None:
        self.measure, self.every = measure, every
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def _score(self, model: torch.nn.Module, step: int) -> None:
        fidelity = self.measure()
        model.train()
        self.history.append({"step": step, **fidelity.as_dict()})
        if self.best is None or fidelity.sentence_cosine > self.best[0]:
            weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            self.best = (fidelity.sentence_cosine, step, weights)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._score(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._score(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.history[-1]["step"] != state.global_step:
            self._score(model, state.global_step)
        model.load_state_dict(self.best[2])

    @property
    def selected_step(self) -> int:
        return self.best[1]


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout only adds noise to an exact-matching objective: switch it off in the student."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, AttentionMechanism):
            module.dropout = 0.0


def select_trainable(model: torch.nn.Module, trainable: str) -> int:
    """Freeze everything but the chosen part; returns the number of trainable parameters."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}.")
    for name, parameter in model.named_parameters():
        if trainable == "all":
            parameter.requires_grad_(True)
        elif trainable == "attention":
            parameter.requires_grad_(".attention." in name)
        else:
            parameter.requires_grad_(".mechanism." in name)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count == 0:
        raise ValueError(f"trainable={trainable!r} leaves nothing to train in this variant (it has no "
                         "mechanism parameters); use 'attention' or 'all'.")
    return count


def learning_rate_groups(model: torch.nn.Module, learning_rate: float,
                         mechanism_learning_rate: float | None) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters: the mechanism's own at
    ``mechanism_learning_rate`` (when given), the rest at ``learning_rate``."""
    mechanism, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (mechanism if mechanism_learning_rate is not None and ".mechanism." in name else rest).append(parameter)
    groups = [{"params": rest, "lr": learning_rate}, {"params": mechanism, "lr": mechanism_learning_rate}]
    return [group for group in groups if group["params"]]


def text_chunks(texts: list[str], tokenizer, max_length: int):
    """Tokenized ``max_length`` windows of every text: long documents give several training rows."""
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=True)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def held_out_texts(data, text_column: str, count: int, seed: int) -> tuple[list[str], str]:
    """``count`` texts of the split that training never sees (test, else validation), and its name."""
    split = "test" if "test" in data else "validation"
    return list(data[split].shuffle(seed=seed).select(range(count))[text_column]), split


def selection_texts(data, text_column: str, count: int, held_out: int, seed: int) -> list[str]:
    """Up to ``count`` texts to choose the best weights on, disjoint from training and from the
    ``held_out`` measurement texts: validation when there is a test split, else the validation
    texts after the measured ones."""
    validation = data["validation"].shuffle(seed=seed)
    start = 0 if "test" in data else held_out
    stop = min(start + count, len(validation))
    return list(validation.select(range(start, stop))[text_column]) if stop > start else []


def step_cap(config: DistillConfig) -> int:
    """The steps a recovery may take: ``max_steps`` when given; else, under a time budget, no cap (the budget
    rules: ``effzoo distill --minutes 10`` trains for ten minutes, however many steps that is), else
    ``DEFAULT_MAX_STEPS``."""
    if config.max_steps is not None:
        return config.max_steps
    return NO_STEP_CAP if config.time_budget_minutes else DEFAULT_MAX_STEPS


def training_arguments(config: DistillConfig) -> TrainingArguments:
    """Trainer's arguments of a recovery. A run with no step cap saves its checkpoints by the clock
    (:class:`TimeBudget`), the others at each quarter of their steps."""
    steps = step_cap(config)
    strategy = "steps" if config.save_checkpoints and steps != NO_STEP_CAP else "no"
    scheduler_type = "linear" if config.schedule == "linear" else "constant_with_warmup"
    return TrainingArguments(
        output_dir=str(config.output_dir), max_steps=steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate, lr_scheduler_type=scheduler_type, warmup_steps=0.05,
        seed=config.seed, save_strategy=strategy,
        save_steps=max(steps // CHECKPOINTS_PER_RUN, 1), save_total_limit=1, logging_steps=10, report_to=[],
        use_cpu=not torch.cuda.is_available(), disable_tqdm=not config.progress, remove_unused_columns=False,
    )


def distill(config: DistillConfig) -> dict[str, Any]:
    """Distil, measure fidelity on held-out text before and after, save the student and the results."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {config.schedule!r}; 'linear' decays to zero, "
                         "'constant' holds the rate after the warm-up.")
    if config.teacher_forced and config.sentence_weight:
        raise ValueError("teacher_forced matches the attention outputs only, so sentence_weight does not apply: set it "
                         "to 0, or run a second recovery without teacher_forced with the sentence term.")
    output = Path(config.output_dir)
    check_output_dir(output, config.overwrite, resuming=bool(config.resume_from_checkpoint))
    transformers.set_seed(config.seed)
    data = load_data(config.data, seed=config.seed)
    train_texts = list(data["train"][config.text_column])
    held_out, held_out_split = held_out_texts(data, config.text_column, config.eval_texts, config.seed)

    tokenizer = AutoTokenizer.from_pretrained(config.student)
    teacher = AutoModel.from_pretrained(resolve_source(config.teacher))
    student = AutoModel.from_pretrained(config.student)
    before = measure_fidelity(teacher, student, tokenizer, held_out, config.max_length)
    trainable_parameters = select_trainable(student, config.trainable)
    disable_dropout(student)

    args = training_arguments(config)
    uncapped = args.max_steps == NO_STEP_CAP
    budget = None
    if config.time_budget_minutes:
        checkpoints = CHECKPOINTS_PER_RUN if uncapped and config.save_checkpoints else 0
        budget = TimeBudget(config.time_budget_minutes, checkpoints=checkpoints)
    callbacks = [budget] if budget else []
    keep_best = None
    chosen_on = (selection_texts(data, config.text_column, config.selection_texts, config.eval_texts, config.seed)
                 if config.select_every else [])
    if config.select_every and len(chosen_on) < 3:
        logger.warning(f"Only {len(chosen_on)} validation texts besides the measured ones: the last weights are kept "
                       "(choosing the best needs 3 to rank similarities).")
    elif config.select_every:
        keep_best = KeepBest(lambda: measure_fidelity(teacher, student, tokenizer, chosen_on, config.max_length),
                             config.select_every)
        callbacks.append(keep_best)
    # Trainer's own AdamW (weight decay 0), with one learning rate per group; the scheduler scales each.
    optimizer = torch.optim.AdamW(learning_rate_groups(student, config.learning_rate, config.mechanism_learning_rate),
                                  weight_decay=0.0)
    # Under a time budget a step cap, if any, is not what ends the run: a schedule laid over it would
    # stay in its warm-up. The budget's own schedule runs on the clock instead.
    scheduler = budget.schedule(optimizer, config.schedule, TIME_BUDGET_WARMUP_STEPS) if budget else None
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=text_chunks(train_texts, tokenizer, config.max_length),
        data_collator=transformers.DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        callbacks=callbacks, optimizers=(optimizer, scheduler), teacher=teacher,
        hidden_weight=config.hidden_weight, attention_weight=config.attention_weight,
        sentence_weight=config.sentence_weight, teacher_forced=config.teacher_forced, bf16=config.bf16,
    )
    if uncapped and config.progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(UncappedProgress)
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    wall_minutes = (time.perf_counter() - started) / 60
    cpu_minutes = (time.process_time() - started_cpu) / 60  # summed over threads
    trainer.save_model(str(output))
    after = measure_fidelity(teacher, student, tokenizer, held_out, config.max_length)

    results = {
        "teacher": config.teacher,
        "student": config.student,
        "variant": student.config.model_type,
        "steps": trainer.state.global_step,
        "wall_minutes": round(wall_minutes, 2),
        "cpu_minutes": round(cpu_minutes, 2),
        "trainable_parameters": trainable_parameters,
        "held_out": f"{len(held_out)} texts of the {held_out_split} split",
        "selected_step": keep_best.selected_step if keep_best else trainer.state.global_step,
        "selection": keep_best.history if keep_best else [],
        "before": before.as_dict(),
        "after": after.as_dict(),
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    if trainer.is_world_process_zero():
        (output / "effzoo_distill.json").write_text(json.dumps(results, indent=2))
        # The student's provenance carries over; its fidelity (from an earlier recovery) is replaced.
        dataset_type, dataset_name = dataset_names(config.data)
        provenance = read_provenance(config.student) | {"fidelity": {
            "teacher": config.teacher, "data": results["held_out"], "dataset_type": dataset_type,
            "dataset_name": dataset_name, "dataset_split": held_out_split, "metrics": after.as_dict(),
            "before_recovery": before.as_dict(), "recovery_cpu_minutes": results["cpu_minutes"],
        }}
        record_provenance(output, **provenance)
    return results
