"""Shared operations of the sparse mechanisms: layouts, gathers, masks and the block-sparse engine.

The mechanisms at the top of ``effzoo.attention`` give a pattern; these modules run it. Each fast
operation has a plain, slow reference beside it (``naive_*``) that the tests compare it with.

- ``permutation``: positions in another order and back (``reorder``, ``restore``).
- ``layout``: block layouts (``KeyBlocks``, ``Part``, ``HeadGroup``) and their helpers.
- ``key_gather``: the keys each query block sees, gathered into one buffer.
- ``global_tokens``: the global tokens of a packed batch.
- ``key_masks``: which keys each query keeps, on blocks and as an L×L pattern.
- ``query_blocks``: a part's queries in blocks, with their keys, and back.
- ``chunking``: (heads, batch rows) chunks within a memory budget.
- ``chunked_flash``: the fused CPU path with its own backward.
- ``block_attention``: the engine, ``block_sparse_attention``.
- ``attention_weights``: its softmax weights on the attended pairs, as sparse COO entries.
"""
