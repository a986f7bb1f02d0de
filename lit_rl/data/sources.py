"""RowSource: training and validation rows made by code (a procedural task generator, an
environment library's task set) rather than read from a file, named by ``class_path`` as a
``PromptDataModule``'s ``train_data``."""

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

Row = dict[str, Any]
Split = Literal["train", "validation"]


class RowSource(ABC):
    """Rows for the two splits, made from the source's own settings (its seed among them).

    ``rows`` must give the same rows, in the same order, every time it is called with the
    same settings: a checkpoint holds the data position as an index into them, so a resumed
    run reads on from where it stopped. The data module drops validation rows whose prompt is
    also a training prompt (logged), so held-out evaluation is held out even where a generator
    repeats itself.
    """

    @abstractmethod
    def rows(self, split: Split) -> list[Row]:
        """The rows of ``split``, each with the prompt column the data module reads."""


class EnvironmentRows(RowSource):
    """Rows for an environment that writes its own prompts (a game, a task set it draws from
    its seed): row i is ``{"seed": s_i}``, and the G episodes of a row play the game of its
    seed. Training and validation seeds come from separate streams of ``seed``; validation
    rows are the same games at every evaluation.

    Args:
        num_train: training rows (games).
        num_val: validation rows.
        seed: the streams' seed.
    """

    def __init__(self, num_train: int = 5000, num_val: int = 100, seed: int = 0) -> None:
        if num_train < 1 or num_val < 0:
            raise ValueError(
                f"EnvironmentRows: num_train >= 1 and num_val >= 0, got {num_train}, {num_val}"
            )
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def rows(self, split: Split) -> list[Row]:
        stream, count = (0, self.num_train) if split == "train" else (1, self.num_val)
        seeds = np.random.SeedSequence([self.seed, stream]).generate_state(count, np.uint64)
        return [{"seed": int(value) % 2**62} for value in seeds]
