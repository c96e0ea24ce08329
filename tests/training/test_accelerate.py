"""The training scripts run unchanged under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import BertModel

from tests.conftest import save_tiny_checkpoint


def test_two_process_ddp_trains_identically_on_both_ranks(tmp_path):
    source = save_tiny_checkpoint(BertModel, tmp_path / "bert")
    data = tmp_path / "train.csv"
    # Class "a" uses the words w0-w44 and class "b" w45-w89: learnable in a few steps.
    rows = [(" ".join(f"w{(i * 7 + j) % 45 + 45 * (i % 2)}" for j in range(8)), "ab"[i % 2]) for i in range(48)]
    data.write_text("text,label\n" + "\n".join(f"{text},{label}" for text, label in rows))
    output = tmp_path / "out"
    script = Path(__file__).with_name("ddp_finetune.py")
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    result = subprocess.run(
        # accelerate's torchrun launcher; without GPUs both processes train on the CPU over gloo.
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(source), str(data), str(output)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["first"] == ranks[1]["first"]
    losses = ranks[0]["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
