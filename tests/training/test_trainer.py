"""Transformers' Trainer trains an effzoo model unchanged."""

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import effzoo
from tests.conftest import TINY


def test_trainer_lowers_the_loss(tmp_path):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 99, (32, 10), generator=generator)
    labels = (input_ids[:, 1] > 50).long()  # learnable from the tokens
    data = Dataset.from_dict({"input_ids": input_ids.tolist(), "attention_mask": [[1] * 10] * 32,
                              "labels": labels.tolist()})
    model = effzoo.FullForSequenceClassification(effzoo.FullConfig(**TINY, num_labels=2))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=5, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
