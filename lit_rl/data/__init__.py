"""Prompt data: the embedded procedural math set, local files, `datasets` names, and rows made by
code (``RowSource``)."""

from lit_rl.data.math_problems import TEMPLATES, generate_problems, train_test_split
from lit_rl.data.prompts import EMBEDDED_MATH, MESSAGES, PromptDataModule, load_rows
from lit_rl.data.resumable import ResumableDataLoader, ResumableSampler
from lit_rl.data.sources import EnvironmentRows, RowSource

__all__ = [
    "EMBEDDED_MATH",
    "MESSAGES",
    "TEMPLATES",
    "EnvironmentRows",
    "PromptDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "RowSource",
    "generate_problems",
    "load_rows",
    "train_test_split",
]
