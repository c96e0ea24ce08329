"""Run by test_accelerate.py under `accelerate launch`: fine-tune on tiny data, record each rank's weights."""

import json
import sys

import torch
from transformers import TrainerCallback

from effzoo.training import FinetuneConfig, finetune


class RecordWeights(TrainerCallback):
    def __init__(self, output: str) -> None:
        self.output = output

    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        record = {"checksum": float(weights.double().sum()), "first": weights[:5].tolist(), "losses": losses,
                  "world_size": args.world_size}
        with open(f"{self.output}/rank{args.process_index}.json", "w") as handle:
            json.dump(record, handle)


if __name__ == "__main__":
    model, data, output = sys.argv[1:4]
    finetune(FinetuneConfig(model=model, convert_to="full", data=data, output_dir=output, max_length=16, epochs=4,
                            batch_size=4, learning_rate=2e-3, progress=False, logging_steps=1, save_checkpoints=False,
                            callbacks=[RecordWeights(output)]))
