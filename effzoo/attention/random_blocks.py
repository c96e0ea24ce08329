"""BigBird's block-sparse attention, ITC form (Zaheer et al. 2020, §2 and appendix D).

The sequence is cut into blocks of ``block_size``. Query block b attends key blocks b - 1, b, b + 1
(the window), ``num_random_blocks`` random blocks, and the global blocks: the first and the last
(real) block, whose queries also attend every key. Bidirectional only.

Random blocks are drawn, per layer, head and query block, among the real blocks that are neither
global nor in the window, by a seeded hash of (seed, head, query block, key block): a draw does
not depend on the padded length, so right padding leaves real tokens unchanged. In eval the seed
is the layer index (a fixed layout, spread over the sequence); in training it is redrawn at each
forward from torch's generator (reproducible under ``transformers.set_seed``).
"""

from __future__ import annotations

from typing import Any

import torch

from .blocksparse import BlockSparseAttention
from .ops.layout import HeadGroup, KeyBlocks, Part, round_up

_MODULUS = 2**31 - 1  # a prime: products of two residues fit in int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A few rounds of Lehmer multiplication and xorshift on residues mod 2³¹ - 1."""
    for multiplier, shift in ((48271, 13), (69621, 17), (48271, 11)):
        x = (x % _MODULUS) * multiplier % _MODULUS
        x = x ^ (x >> shift)
    return x


def block_scores(seed: int, num_heads: int, num_blocks: int, device: torch.device) -> torch.Tensor:
    """(heads, 1, query_blocks, key_blocks) pseudo-random scores in [0, 1), independent of the shape."""
    head = torch.arange(num_heads, device=device).view(-1, 1, 1, 1)
    query_block = torch.arange(num_blocks, device=device).view(1, 1, -1, 1)
    key_block = torch.arange(num_blocks, device=device).view(1, 1, 1, -1)
    x = torch.tensor(seed % _MODULUS, device=device)
    for coordinate in (head, query_block, key_block):
        x = _mix(x + coordinate + 1)
    return x.double() / _MODULUS


class RandomBlocksAttention(BlockSparseAttention):
    """BigBird ITC: window of 3 blocks, random blocks, first and last blocks global.

    Config (``EffzooBigBirdConfig``, which holds the defaults and checks): ``block_size``,
    ``num_random_blocks``, plus the engine's fields. Extra forward input:
    ``global_attention_mask``. Bidirectional only: a causal config or call raises.
    """

    supports_causal = False

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        if config.is_decoder:
            raise ValueError(
                "BigBird's random blocks are bidirectional: is_decoder=True (a causal model) is not supported. "
                "Set is_decoder=False, or use local, longformer or sparse attention for a causal LM."
            )
        self.block_size = config.block_size
        self.num_random_blocks = config.num_random_blocks

    def padded_length(self, length: int) -> int:
        return round_up(length, self.block_size)

    def pattern_global_tokens(self, lengths: torch.Tensor, padded_length: int) -> torch.Tensor:
        """The first block and the last real block of each sequence."""
        block = torch.arange(padded_length, device=lengths.device) // self.block_size
        last = (lengths - 1).clamp(min=0) // self.block_size
        return (block == 0) | (block == last[:, None])

    def head_groups(
        self, padded_length: int, lengths: torch.Tensor, causal: bool, num_heads: int
    ) -> list[HeadGroup]:
        num_blocks = padded_length // self.block_size
        window = KeyBlocks.neighbours(num_blocks, 1, 1, self.block_size, device=lengths.device)
        random = KeyBlocks(self.random_blocks(num_blocks, lengths, num_heads), self.block_size)
        return [HeadGroup(slice(0, num_heads), (Part(self.block_size, (window, random)),))]

    def random_blocks(self, num_blocks: int, lengths: torch.Tensor, num_heads: int) -> torch.Tensor:
        """(heads, batch, query_blocks, num_random_blocks) random key blocks, -1 where too few exist.

        Candidates are the real blocks other than the global ones (first, last) and the window.
        """
        seed = int(torch.randint(_MODULUS, ())) if self.training else self.layer_idx
        scores = block_scores(seed, num_heads, num_blocks, lengths.device)
        query_block = torch.arange(num_blocks, device=lengths.device)[:, None]
        key_block = torch.arange(num_blocks, device=lengths.device)[None, :]
        last = (torch.div(lengths + self.block_size - 1, self.block_size, rounding_mode="floor") - 1).view(-1, 1, 1)
        candidate = (key_block >= 1) & (key_block < last) & ((key_block - query_block).abs() > 1)
        scores = torch.where(candidate, scores, -1.0)  # (heads, batch, query_blocks, key_blocks)
        values, index = scores.topk(min(self.num_random_blocks, num_blocks), dim=-1)
        return index.masked_fill(values < 0, -1)
