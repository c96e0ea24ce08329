"""The special tokens as exact keys beside compressed ones: which tokens, and what attending them gives."""

import torch

from effzoo.attention.reference import dense_reference_attention
from effzoo.attention.special_keys import append_special_keys, special_token_mask


def test_the_first_and_last_real_token_are_special_and_causal_keeps_the_first():
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    expected = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]]).bool()
    assert torch.equal(special_token_mask(mask, 4, 5, causal=False, device="cpu"), expected)
    first_only = torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    assert torch.equal(special_token_mask(mask, 4, 5, causal=True, device="cpu"), first_only)
    assert torch.equal(special_token_mask(None, 1, 3, causal=False, device="cpu"), torch.tensor([[1, 0, 1]]).bool())


def test_appended_special_keys_are_attended_exactly_beside_the_compressed_ones():
    """Attention over [compressed ; special] equals dense attention over those rows written out by hand."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=generator) for _ in range(3))
    compressed_k, compressed_v = (torch.randn(2, 3, 2, 4, generator=generator) for _ in range(2))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]).bool()
    compressed_mask = torch.tensor([[True, True], [True, False]])
    special = special_token_mask(mask, 2, 6, causal=False, device="cpu")
    keys, values, key_mask = append_special_keys(compressed_k, compressed_v, compressed_mask, k, v, special)
    assert keys.shape == (2, 3, 4, 4) and key_mask.tolist() == [[True, True, True, True], [True, False, True, True]]
    out = dense_reference_attention(q, keys, values, key_mask[:, None, None, :])
    # Row 0: both compressed rows, then tokens 0 and 4; row 1: its one real compressed row, then 2 and 5.
    for row, compressed, special_positions in ((0, [0, 1], [0, 4]), (1, [0], [2, 5])):
        by_hand_k = torch.cat([compressed_k[row][:, compressed], k[row][:, special_positions]], dim=1)
        by_hand_v = torch.cat([compressed_v[row][:, compressed], v[row][:, special_positions]], dim=1)
        torch.testing.assert_close(out[row], dense_reference_attention(q[row][None], by_hand_k[None], by_hand_v[None])[0])
