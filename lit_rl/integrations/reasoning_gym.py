"""reasoning-gym's procedural reasoning tasks as lit_rl's rows and reward.

``ReasoningGymRows`` makes the rows of any reasoning-gym dataset (by its name and config, as
``reasoning_gym.create_dataset`` takes them) for ``PromptDataModule``'s ``train_data``;
``ReasoningGymReward`` scores a completion with the dataset's own ``score_answer`` on the answer
between ``<answer>`` tags (reasoning-gym's ``extract_answer``), as reasoning-gym's own
evaluations do, or on an "Answer: N" line. Install with ``pip install lit_rl[reasoning-gym]``.
"""

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch

from lit_rl.data.sources import Row, RowSource, Split
from lit_rl.integrations import missing
from lit_rl.rewards import Batch, RewardOutput
from lit_rl.rewards import extract_answer as extract_math_answer

try:
    import reasoning_gym
    from reasoning_gym.utils import extract_answer
except ImportError as error:
    raise ImportError(missing("reasoning-gym", "reasoning-gym")) from error

ENTRY = "entry"  # the row field holding reasoning-gym's item, which its scorer reads


class ReasoningGymRows(RowSource):
    """The items of one reasoning-gym dataset as rows: ``question``, ``answer`` and the whole
    item as ``entry`` (its metadata is what ``score_answer`` reads).

    Train and validation are disjoint index ranges of one dataset of ``num_train + num_val``
    items (two seeds would not do: reasoning-gym draws item i from ``Random(seed + i)``, so
    seed s + 1's items are seed s's shifted by one). Each item is a function of the seed and
    its index, so the rows are the same in every process and every resumed run.

    Args:
        dataset: a reasoning-gym dataset name (``chain_sum``, ``basic_arithmetic``,
            ``composite``, ...).
        config: the dataset's config fields (e.g. ``{min_terms: 2, max_terms: 3}``); for
            ``composite``, ``datasets`` as a list of ``{name, weight, config}``.
        num_train: training items.
        num_val: validation items.
        seed: the dataset's seed.
    """

    def __init__(
        self,
        dataset: str,
        config: dict[str, Any] | None = None,
        num_train: int = 5000,
        num_val: int = 200,
        seed: int = 0,
    ) -> None:
        if num_train < 1 or num_val < 0:
            raise ValueError(
                f"ReasoningGymRows: num_train >= 1 and num_val >= 0, got {num_train}, {num_val}"
            )
        self.dataset, self.config = dataset, dict(config or {})
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def rows(self, split: Split) -> list[Row]:
        data = reasoning_gym.create_dataset(
            self.dataset, seed=self.seed, size=self.num_train + self.num_val, **self._config()
        )
        first, count = (0, self.num_train) if split == "train" else (self.num_train, self.num_val)
        return [_row(data[index]) for index in range(first, first + count)]

    def _config(self) -> dict[str, Any]:
        if self.dataset != "composite" or "datasets" not in self.config:
            return self.config
        from reasoning_gym.composite import DatasetSpec  # composite's specs are not dicts

        specs = [DatasetSpec(**spec) for spec in self.config["datasets"]]
        return {**self.config, "datasets": specs}


def _row(item: dict[str, Any]) -> Row:
    answer = item.get("answer")
    return {
        "question": item["question"],
        "answer": "" if answer is None else str(answer),
        ENTRY: item,
    }


@functools.cache
def _scorer(dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
    return reasoning_gym.get_score_answer_fn(dataset)


class ReasoningGymReward:
    """reasoning-gym's own score of each completion: the dataset's ``score_answer`` on the
    completion's answer (none found: scored as reasoning-gym scores ``None``, usually 0). The
    dataset is the item's ``metadata.source_dataset``, so a composite's items are scored by
    their own dataset.

    Args:
        entry_field: the row field with reasoning-gym's item (``ReasoningGymRows`` writes
            ``entry``).
        answer_format: where the answer is. ``tags``: between the last ``<answer>`` and
            ``</answer>`` (reasoning-gym's ``extract_answer``, its own convention);
            ``answer_line``: lit_rl's math extraction (the last ``\\boxed{}``, else "Answer:
            N", else the last number), for small models that do not keep to the tags.
    """

    name = "reasoning_gym"

    def __init__(
        self, entry_field: str = ENTRY, answer_format: Literal["tags", "answer_line"] = "tags"
    ) -> None:
        if answer_format not in ("tags", "answer_line"):
            raise ValueError(
                f"ReasoningGymReward.answer_format must be 'tags' or 'answer_line', got "
                f"{answer_format!r}"
            )
        self.entry_field, self.answer_format = entry_field, answer_format

    def fields(self) -> list[str]:
        return [self.entry_field]

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        scores = []
        for completion, entry in zip(completions, batch[self.entry_field], strict=True):
            score = _scorer(entry["metadata"]["source_dataset"])
            answer = (
                extract_answer(completion)
                if self.answer_format == "tags"
                else extract_math_answer(completion)
            )
            scores.append(float(score(answer, entry)))
        total = torch.tensor(scores, dtype=torch.float32)
        return RewardOutput(total=total, components={self.name: total})
