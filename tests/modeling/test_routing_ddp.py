"""Routing centroids under DistributedDataParallel: two CPU processes over gloo, different data per rank.

The centroids are buffers that training moves. DDP would only hide a divergence by broadcasting
rank 0's buffers, so the ranks here run with ``forward_sync_buffers=False``: the centroids stay equal on
every rank only because their k-means statistics are all-reduced before each update.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD_SIZE = 2
STEPS = 3
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


def routing_model() -> nn.Module:
    import effzoo

    torch.manual_seed(0)  # the same start on every rank
    config = effzoo.RoutingConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, num_clusters=3, local_window=4)
    return effzoo.RoutingForMaskedLM(config)


def centroids(model: nn.Module) -> torch.Tensor:
    return torch.cat([buffer.flatten() for name, buffer in model.named_buffers() if name.endswith("centroids")])


def train_rank(rank: int, init_method: str, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE)
    try:
        model = routing_model()
        start = centroids(model).clone()
        ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        ddp.train()
        for _ in range(STEPS):
            input_ids = torch.randint(5, 99, (2, 16), generator=generator)
            ddp(input_ids, labels=input_ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        ddp.eval()  # applies the last step's update
        gathered = [torch.empty_like(start) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, centroids(model))
        if rank == 0:
            torch.save({"start": start, "ranks": gathered}, Path(output) / "centroids.pt")
    finally:
        dist.destroy_process_group()


def test_centroids_stay_identical_on_every_rank_and_move(tmp_path):
    with tempfile.TemporaryDirectory() as rendezvous:
        context = mp.start_processes(train_rank, args=(f"file://{rendezvous}/init", str(tmp_path)),
                                     nprocs=WORLD_SIZE, start_method="spawn", join=False)
        deadline = time.monotonic() + TIMEOUT_S
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for process in context.processes:
                    process.terminate()
                pytest.fail(f"the {WORLD_SIZE} ranks did not finish within {TIMEOUT_S} s")
    result = torch.load(tmp_path / "centroids.pt")
    first, second = result["ranks"]
    assert torch.equal(first, second), "the ranks' centroids differ"
    assert not torch.equal(first, result["start"]), "training did not move the centroids"
