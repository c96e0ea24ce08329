"""BERT / RoBERTa checkpoints -> any variant, and the parity check of a conversion against its source."""

from .convert import ConversionReport, convert
from .parity import ParityReport, compare_with_source

__all__ = ["ConversionReport", "ParityReport", "compare_with_source", "convert"]
