"""Peak memory and time of forward + backward, reversible layers against standard ones (issue 9, part 2).

Each point runs in its own process (glibc told to give freed memory back at once): a ``full`` model
(``FullModel``, dropout on, training mode) of N layers is built, the peak-RSS watermark is reset, and one
step (forward, ``sum().backward()``) runs; the peak RSS above the RSS after setup is what the step added:
activations, gradients (the same for both) and workspaces. Activations are the peak minus the gradients.

    python benchmarks/reversible_memory.py --length 4096 --layers 2 6 12            # BERT-base width
    python benchmarks/reversible_memory.py --length 4096 --hidden-size 256 --heads 4 --ffn 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: glibc returns every block of 64 KiB or more to the system when it is freed, so the resident set
#: follows the live tensors and the watermark measures the step's own peak.
_MALLOC_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model(spec: dict, reversible: bool):
    import torch

    import effzoo

    torch.manual_seed(0)
    config = effzoo.FullConfig(
        vocab_size=1000, hidden_size=spec["hidden_size"], num_attention_heads=spec["heads"],
        intermediate_size=spec["ffn"], num_hidden_layers=spec["layers"], max_position_embeddings=spec["length"],
        reversible=reversible, chunk_size_feed_forward=spec["chunk"],
    )
    return effzoo.FullModel(config, add_pooling_layer=False).train()


def _step(model, input_ids) -> None:
    model.zero_grad(set_to_none=True)
    model(input_ids).last_hidden_state.sum().backward()


def measure_memory(spec: dict) -> dict:
    """Peak memory of one step of one model, in this process."""
    import torch

    torch.set_num_threads(spec["threads"])
    model = _model(spec, spec["reversible"])
    input_ids = torch.randint(0, 1000, (1, spec["length"]))
    gradients = sum(p.numel() * p.element_size() for p in model.parameters())
    _step(model, input_ids)  # warm-up (allocator, kernels)
    model.zero_grad(set_to_none=True)
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS watermark (VmHWM)
    _step(model, input_ids)
    peak = (_status_kib("VmHWM") - baseline) * 1024
    return {"peak_mib": round(peak / 2**20, 1), "activations_mib": round((peak - gradients) / 2**20, 1)}


def measure_time(spec: dict) -> dict:
    """Fastest step of each model, standard and reversible steps interleaved (load changes hit both alike)."""
    import torch

    torch.set_num_threads(spec["threads"])
    models = {kind: _model(spec, kind == "reversible") for kind in ("standard", "reversible")}
    input_ids = torch.randint(0, 1000, (1, spec["length"]))
    times = {kind: [] for kind in models}
    for repeat in range(spec["repeats"] + 1):
        for kind, model in models.items():
            started = time.perf_counter()
            _step(model, input_ids)
            if repeat:  # the first round is a warm-up
                times[kind].append(time.perf_counter() - started)
    return {kind: round(min(values), 2) for kind, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12])
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--chunk", type=int, default=0, help="chunk_size_feed_forward (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed steps per model after a warm-up, the fastest shown (0: memory only)")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        spec = json.loads(args.point)
        print(json.dumps(measure_memory(spec) if spec["mode"] == "memory" else measure_time(spec)))
        return

    def point(spec: dict, env: dict | None) -> dict:
        result = subprocess.run([sys.executable, __file__, "--point", json.dumps(spec)], capture_output=True,
                                text=True, check=True, env=env)
        return json.loads(result.stdout.strip().splitlines()[-1])

    print(f"L={args.length} hidden={args.hidden_size} heads={args.heads} ffn={args.ffn} chunk={args.chunk} "
          f"threads={args.threads}")
    print(f"{'layers':>6} {'peak MiB std':>13} {'rev':>8} {'activations MiB std':>20} {'rev':>8} "
          f"{'s/step std':>11} {'rev':>6} {'time ratio':>10}")
    for layers in args.layers:
        spec = {"length": args.length, "layers": layers, "hidden_size": args.hidden_size, "heads": args.heads,
                "ffn": args.ffn, "chunk": args.chunk, "threads": args.threads, "repeats": args.repeats}
        memory = {kind: point({**spec, "mode": "memory", "reversible": kind == "rev"}, _MALLOC_ENV)
                  for kind in ("std", "rev")}
        seconds = point({**spec, "mode": "time"}, None) if args.repeats else {"standard": 0.0, "reversible": 0.0}
        ratio = seconds["reversible"] / seconds["standard"] if seconds["standard"] else float("nan")
        print(f"{layers:>6} {memory['std']['peak_mib']:>13.1f} {memory['rev']['peak_mib']:>8.1f} "
              f"{memory['std']['activations_mib']:>20.1f} {memory['rev']['activations_mib']:>8.1f} "
              f"{seconds['standard']:>11.2f} {seconds['reversible']:>6.2f} {ratio:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
