"""Run by test_optimizers.py under `accelerate launch`: fine-tune with Lookahead, record each rank's slow weights."""

import json
import sys

import torch
from transformers import TrainerCallback

from effzoo.training import FinetuneConfig, finetune


class RecordSlowWeights(TrainerCallback):
    def __init__(self, output: str) -> None:
        self.output = output

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        lookahead = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper around it
        slow = [lookahead.state[p]["slow_weights"].flatten() for group in lookahead.param_groups
                for p in group["params"]]
        record = {"slow": float(torch.cat(slow).double().sum()), "first": torch.cat(slow)[:5].tolist(),
                  "steps": lookahead.param_groups[0]["lookahead_step"], "world_size": args.world_size,
                  "type": type(lookahead).__name__}
        with open(f"{self.output}/rank{args.process_index}.json", "w") as handle:
            json.dump(record, handle)


if __name__ == "__main__":
    model, data, output = sys.argv[1:4]
    finetune(FinetuneConfig(model=model, convert_to="full", data=data, output_dir=output, max_length=16, epochs=2,
                            batch_size=4, learning_rate=2e-3, progress=False, logging_steps=1, save_checkpoints=False,
                            optimizer="lookahead_radam", lookahead_k=4, callbacks=[RecordSlowWeights(output)]))
