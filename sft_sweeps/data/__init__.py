"""Chat data for training and evaluation: synthetic tasks, local JSONL/JSON/Parquet files, hub, ShareGPT.

Every source comes out as OpenAI-style `messages` records, validated, split three ways without overlap,
and fingerprinted, so two runs can prove they saw the same data.

Example:
    >>> from sft_sweeps.config import DatasetConfig
    >>> splits = load_splits(DatasetConfig(num_train=8, num_validation=2, num_test=2))
    >>> splits.train[0]["messages"][-1]["role"]
    'assistant'
"""

from sft_sweeps.data.splits import Splits, fingerprint, load_splits
from sft_sweeps.data.validate import REASONS, DataValidationError, to_record

__all__ = ["REASONS", "DataValidationError", "Splits", "fingerprint", "load_splits", "to_record"]
