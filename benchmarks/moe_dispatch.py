"""Cost of the Switch mixture-of-experts feed-forward against the dense one (issue 9, part 1).

One BERT-base-size feed-forward block (hidden 768, FFN 3072, residual + LayerNorm) at L tokens,
forward + backward in training mode (dropout 0), dense against E experts with top-1 routing (the
same FLOPs per token, E× the parameters). Capacity factor E: no token is dropped, so both do the
same work. Prints seconds per step and the ratio.

    python benchmarks/moe_dispatch.py --length 2048 --experts 8 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

import effzoo
from effzoo.modeling.layers import EffzooLayer
from effzoo.modeling.moe import EffzooMoELayer


def step_seconds(blocks, hidden: torch.Tensor, repeats: int) -> list[float]:
    """Fastest seconds (the least disturbed by other load) of forward + backward of each block, interleaved
    so that load changes hit all alike."""
    times = [[] for _ in blocks]
    for index in range(repeats + 1):
        for block, record in zip(blocks, times):
            x = hidden.detach().requires_grad_()
            started = time.perf_counter()
            block(x).sum().backward()
            if index:  # the first round is a warm-up
                record.append(time.perf_counter() - started)
    return [min(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = effzoo.FullConfig(hidden_size=args.hidden_size, intermediate_size=args.ffn, num_attention_heads=12,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               num_experts=args.experts, num_experts_per_token=args.top_k,
                               capacity_factor=float(args.experts), eval_capacity_factor=float(args.experts))
    mechanism = effzoo.FullModel.mechanism_class
    dense_layer = EffzooLayer(config, mechanism, 0).train()
    moe_layer = EffzooMoELayer(config, mechanism, 0).train()
    torch.nn.init.normal_(moe_layer.router.weight, std=0.02)
    hidden = torch.randn(1, args.length, args.hidden_size)

    def dense(x):
        return dense_layer.feed_forward(x)

    def moe(x):
        mixture, routing = moe_layer.mixture(x, None)
        return moe_layer.output(mixture, x) + 0 * routing.balance_loss

    with torch.no_grad():
        load = torch.bincount(moe_layer.router(hidden).experts.flatten(), minlength=args.experts).tolist()
    dense_s, moe_s = step_seconds([dense, moe], hidden, args.repeats)
    dense_params = sum(p.numel() for p in dense_layer.intermediate.parameters()) + sum(
        p.numel() for p in dense_layer.output.dense.parameters())
    moe_params = sum(p.numel() for p in moe_layer.experts.parameters()) + moe_layer.router.weight.numel()
    print(f"L={args.length} hidden={args.hidden_size} ffn={args.ffn} experts={args.experts} top-{args.top_k} "
          f"threads={torch.get_num_threads()} tokens per expert={load}")
    print(f"dense feed-forward  fwd+bwd {dense_s * 1e3:8.1f} ms   {dense_params / 1e6:6.2f} M parameters")
    print(f"mixture of experts  fwd+bwd {moe_s * 1e3:8.1f} ms   {moe_params / 1e6:6.2f} M parameters")
    print(f"ratio {moe_s / dense_s:.2f}x time, {moe_params / dense_params:.2f}x parameters")


if __name__ == "__main__":
    main()
