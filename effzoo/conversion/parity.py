"""How closely a converted model reproduces its source on the same inputs.

For ``full`` the answer must be float32 round-off; for approximate variants it measures how
much the new attention changes the pretrained model before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints.location import resolve_source

#: Sentences of different lengths, so that the batch is padded.
SAMPLE_TEXTS = (
    "Efficient transformers replace quadratic attention with something cheaper.",
    "The cat sat on the mat.",
    "Long documents such as news articles, contracts and scientific papers do not fit in 512 tokens, "
    "which is why sparse, low-rank and kernel attention were invented.",
    "Hello world!",
)


@dataclass
class ParityReport:
    """Largest differences between source and converted outputs, over real tokens only."""

    max_abs_diff_last_hidden_state: float
    max_abs_diff_pooler_output: float | None
    min_token_cosine: float
    num_texts: int
    num_real_tokens: int

    def __str__(self) -> str:
        pooler = "n/a" if self.max_abs_diff_pooler_output is None else f"{self.max_abs_diff_pooler_output:.2e}"
        return (
            f"parity on {self.num_texts} texts ({self.num_real_tokens} real tokens, padded batch):\n"
            f"  max |Δ| last_hidden_state  {self.max_abs_diff_last_hidden_state:.2e}\n"
            f"  max |Δ| pooler_output      {pooler}\n"
            f"  min token cosine           {self.min_token_cosine:.6f}"
        )


@torch.no_grad()
def compare_with_source(
    source: str | Path, converted: str | Path, texts: tuple[str, ...] = SAMPLE_TEXTS
) -> ParityReport:
    """Run the source (with Transformers) and the converted model (with effzoo) on ``texts``."""
    from transformers import AutoModel, AutoTokenizer

    source_model, source_info = AutoModel.from_pretrained(resolve_source(source), output_loading_info=True)
    converted_model, converted_info = AutoModel.from_pretrained(converted, output_loading_info=True)
    source_model, converted_model = source_model.eval().float(), converted_model.eval().float()
    # A checkpoint saved without a pooler gets a random one on loading: nothing to compare then.
    missing = set(source_info["missing_keys"]) | set(converted_info["missing_keys"])
    has_pooler = not any("pooler" in key for key in missing)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    expected = source_model(**batch)
    actual = converted_model(**batch)
    real = batch["attention_mask"].bool()
    reference, candidate = expected.last_hidden_state[real], actual.last_hidden_state[real]
    pooler_diff = None
    if has_pooler:
        pooler_diff = (expected.pooler_output - actual.pooler_output).abs().max().item()
    return ParityReport(
        max_abs_diff_last_hidden_state=(reference - candidate).abs().max().item(),
        max_abs_diff_pooler_output=pooler_diff,
        min_token_cosine=torch.nn.functional.cosine_similarity(reference, candidate, dim=-1).min().item(),
        num_texts=len(texts),
        num_real_tokens=int(real.sum()),
    )
