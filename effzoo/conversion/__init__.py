"""BERT / RoBERTa checkpoints -> any variant, the parity check, and the code saved beside weights."""

from .convert import ConversionReport, convert
from .parity import ParityReport, compare_with_source

__all__ = ["ConversionReport", "ParityReport", "compare_with_source", "convert"]
