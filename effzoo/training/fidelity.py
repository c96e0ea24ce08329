"""How faithfully a converted model reproduces its teacher on real text.

Three figures, from the token level to the use a sentence-embedding model is put to:
- mean token cosine between the two models' last hidden states (real tokens only);
- mean cosine between the two sentence embeddings (mean pooling over real tokens);
- Spearman correlation between the two models' pairwise sentence similarities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Fidelity:
    token_cosine: float
    sentence_cosine: float
    similarity_spearman: float
    num_texts: int

    def as_dict(self) -> dict[str, float]:
        return {key: round(value, 6) for key, value in asdict(self).items()}


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors (sentence-transformers' pooling)."""
    mask = attention_mask[..., None].to(hidden_states.dtype)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (Pearson correlation of their ranks; no ties expected)."""
    ranks_x = x.argsort().argsort().double()
    ranks_y = y.argsort().argsort().double()
    ranks_x, ranks_y = ranks_x - ranks_x.mean(), ranks_y - ranks_y.mean()
    return float((ranks_x * ranks_y).sum() / (ranks_x.norm() * ranks_y.norm()).clamp(min=1e-12))


@torch.no_grad()
def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
           batch_size: int = 8) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-text real-token hidden states and mean-pooled sentence embeddings."""
    model.eval()
    tokens, sentences = [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(model.device)
        hidden = model(**batch).last_hidden_state.float()
        sentences.append(mean_pool(hidden, batch["attention_mask"]))
        tokens += [row[mask.bool()] for row, mask in zip(hidden, batch["attention_mask"])]
    return tokens, torch.cat(sentences)


def measure_fidelity(teacher: PreTrainedModel, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     texts: list[str], max_length: int) -> Fidelity:
    """Compare ``student`` with ``teacher`` on ``texts`` (at least 3, so that similarities can be ranked)."""
    if len(texts) < 3:
        raise ValueError(f"Fidelity needs at least 3 texts to rank similarities, got {len(texts)}.")
    teacher_tokens, teacher_sentences = encode(teacher, tokenizer, texts, max_length)
    student_tokens, student_sentences = encode(student, tokenizer, texts, max_length)
    token_cosine = torch.cat([F.cosine_similarity(t, s, dim=-1) for t, s in zip(teacher_tokens, student_tokens)])
    pairs = torch.triu_indices(len(texts), len(texts), offset=1)

    def similarities(embeddings: torch.Tensor) -> torch.Tensor:
        normalised = F.normalize(embeddings, dim=-1)
        return (normalised @ normalised.T)[pairs[0], pairs[1]]

    return Fidelity(
        token_cosine=float(token_cosine.mean()),
        sentence_cosine=float(F.cosine_similarity(teacher_sentences, student_sentences, dim=-1).mean()),
        similarity_spearman=spearman(similarities(teacher_sentences), similarities(student_sentences)),
        num_texts=len(texts),
    )
