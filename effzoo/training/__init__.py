"""Training recipes on Transformers' Trainer: fine-tuning, continued pre-training, distillation."""

from .data import load_bbc_news, load_data
from .finetune import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "finetune", "load_bbc_news", "load_data"]
