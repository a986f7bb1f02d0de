"""Prompt data: the embedded procedural math set, local files, and `datasets` names."""

from lit_rl.data.math_problems import TEMPLATES, generate_problems, train_test_split
from lit_rl.data.prompts import EMBEDDED_MATH, PromptDataModule, load_rows
from lit_rl.data.resumable import ResumableDataLoader, ResumableSampler

__all__ = [
    "EMBEDDED_MATH",
    "TEMPLATES",
    "PromptDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "generate_problems",
    "load_rows",
    "train_test_split",
]
