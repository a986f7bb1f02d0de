"""PromptDataModule: batches of chat-templated, left-padded prompts with their dataset fields."""

import json
import logging
from pathlib import Path
from typing import Any

from datasets import load_dataset
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_rl.data.math_problems import train_test_split
from lit_rl.data.resumable import ResumableDataLoader, ResumableSampler
from lit_rl.data.sources import RowSource
from lit_rl.models import load_tokenizer

log = logging.getLogger(__name__)

EMBEDDED_MATH = "embedded_math"
MESSAGES = "messages"  # a row's prompt as the chat messages it was given as
Row = dict[str, Any]


FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_rows(source: str, split: str) -> list[Row]:
    """Rows of a local ``.jsonl``/``.json``/``.parquet`` file or of a ``datasets`` name (or a
    local folder ``datasets`` reads)."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(
                f"data file '{source}' does not exist: pass an existing "
                ".jsonl/.json/.parquet file, a datasets name, or 'embedded_math'"
            )
        if suffix == ".jsonl":
            check_jsonl(path)
        builder = "parquet" if suffix == ".parquet" else "json"
        return list(load_dataset(builder, data_files=str(path), split="train"))
    if path.is_file():
        raise ValueError(
            f"data file '{source}' has no .jsonl/.json/.parquet suffix, so its format is "
            f"unknown: rename it (e.g. {path.name}.jsonl)"
        )
    if source.startswith(("/", "./", "../", "~")) and not path.exists():
        raise FileNotFoundError(
            f"'{source}' does not exist: pass an existing .jsonl/.json/.parquet file or "
            "folder, a datasets name, or 'embedded_math'"
        )
    return list(load_dataset(source, split=split))


def check_jsonl(path: Path) -> None:
    """Name the first line of ``path`` that is not a JSON object (``datasets`` reports only
    that generating the dataset failed), or say that the file has no rows."""
    rows = 0
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"data file '{path}' line {number} is not valid JSON ({error.msg}, column "
                    f"{error.colno}): fix or remove that line"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"data file '{path}' line {number} is a {type(row).__name__}, not a JSON "
                    'object: each line holds one row, {"question": ..., "answer": ...}'
                )
            rows += 1
    if rows == 0:
        raise ValueError(f"data file '{path}' has no rows: it is empty")


class PromptDataModule(LightningDataModule):
    """Prompts for RL fine-tuning.

    Each batch holds ``input_ids``/``attention_mask`` [B, P] (chat template applied, left
    padded), ``prompt`` (the user text, B strings) and every other dataset field as a list of
    B values, which rewards read by name (e.g. ``answer``).

    Args:
        tokenizer: model name or directory whose tokenizer and chat template are used
            (LightningCLI links it to the model's name).
        train_data: ``embedded_math`` (procedural math, shipped), a ``.jsonl``/``.json``/
            ``.parquet`` file, a ``datasets`` name, or a ``lit_rl.data.RowSource`` by
            ``class_path`` (rows made by code: reasoning-gym's datasets, an environment's
            games).
        val_data: the same kinds; ``None`` = the embedded test split for ``embedded_math``,
            a ``RowSource``'s own validation rows for a ``RowSource`` (without the ones whose
            prompt is also a training prompt), else no validation.
        prompt_field: dataset column holding the question, or the prompt as a list of chat
            messages (the verl/SkyRL format: rendered as given, kept in the row's
            ``messages``, the last message's text as ``prompt``); ``None`` when an
            environment writes the first messages itself (multi-turn ``episodes``): rows need
            no prompt and nothing is rendered here.
        prompt_suffix: text appended to every question (e.g. the answer format to use).
        system_prompt: optional system message.
        batch_size: prompts per training step (each sampled ``num_generations`` times).
        val_batch_size: prompts per validation batch.
        max_prompt_length: prompts longer than this (in tokens, template included) are an
            error, or dropped with a logged count when ``drop_long_prompts``.
        num_train: size of the embedded training split.
        num_val: size of the embedded test split (and a cap on any validation set).
        math_templates: templates of the embedded set (``lit_rl.data.TEMPLATES``); ``None`` =
            the six word-problem templates.
        seed: shuffling and embedded-train seed; the embedded test split uses ``seed + 1``.
        train_split: split name for ``datasets`` names.
        val_split: split name for ``datasets`` names.
    """

    def __init__(
        self,
        tokenizer: str = "embedded",
        train_data: str | RowSource = EMBEDDED_MATH,
        val_data: str | RowSource | None = None,
        prompt_field: str | None = "question",
        prompt_suffix: str = "",
        system_prompt: str | None = None,
        batch_size: int = 2,
        val_batch_size: int = 32,
        max_prompt_length: int = 256,
        drop_long_prompts: bool = False,
        num_train: int = 5000,
        num_val: int = 200,
        math_templates: list[str] | None = None,
        seed: int = 0,
        train_split: str = "train",
        val_split: str = "test",
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError(
                f"batch sizes must be >= 1, got batch_size={batch_size}, "
                f"val_batch_size={val_batch_size}"
            )
        if max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
        self.train_data = train_data
        self.val_data = val_data
        self.prompt_field = prompt_field
        self.prompt_suffix = prompt_suffix
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.max_prompt_length = max_prompt_length
        self.drop_long_prompts = drop_long_prompts
        self.num_train = num_train
        self.num_val = num_val
        self.math_templates = math_templates
        self.seed = seed
        self.train_split = train_split
        self.val_split = val_split
        self.tokenizer = load_tokenizer(tokenizer)
        self.train_rows: list[Row] = []
        self.val_rows: list[Row] = []

    def _raw_rows(self) -> tuple[list[Row], list[Row]]:
        embedded_train, embedded_val = train_test_split(
            self.num_train if self.train_data == EMBEDDED_MATH else 0,
            self.num_val,
            self.seed,
            self.seed + 1,
            self.math_templates,
        )
        if isinstance(self.train_data, RowSource):
            train = self.train_data.rows("train")
            val = self._held_out(self.train_data.rows("validation"), train)
        elif self.train_data == EMBEDDED_MATH:
            train, val = embedded_train, embedded_val
        else:
            train, val = load_rows(self.train_data, self.train_split), []
        if isinstance(self.val_data, RowSource):
            val = self._held_out(self.val_data.rows("validation"), train)
        elif self.val_data == EMBEDDED_MATH:
            val = embedded_val
        elif self.val_data is not None:
            val = load_rows(self.val_data, self.val_split)
        return train, val[: self.num_val]

    def _held_out(self, val: list[Row], train: list[Row]) -> list[Row]:
        """A generator's validation rows without those whose prompt is a training prompt."""
        if self.prompt_field is None:
            return val
        seen = {str(row.get(self.prompt_field)) for row in train}
        kept = [row for row in val if str(row.get(self.prompt_field)) not in seen]
        if len(kept) < len(val):
            log.info(
                "dropped %d of %d validation rows whose prompt is also a training prompt",
                len(val) - len(kept),
                len(val),
            )
        return kept

    def prepare(self, rows: list[Row], name: str) -> list[Row]:
        """``rows`` with their chat-templated prompt (``prompt``, ``prompt_ids``); ``name``
        says which rows in an error (a row without the prompt field, one too long)."""
        if self.prompt_field is None:  # the environment writes the prompts
            return [{**row, "prompt": "", "prompt_ids": []} for row in rows]
        prepared, too_long = [], 0
        for index, row in enumerate(rows):
            if self.prompt_field not in row:
                raise KeyError(
                    f"{name} row {index} has no field '{self.prompt_field}' (fields: "
                    f"{sorted(row)}); set prompt_field to the question column"
                )
            messages = self._messages(row[self.prompt_field], f"{name} row {index}")
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            if len(ids) > self.max_prompt_length:
                if not self.drop_long_prompts:
                    raise ValueError(
                        f"{name} row {index} is {len(ids)} tokens with the chat template, "
                        f"longer than max_prompt_length={self.max_prompt_length}: raise "
                        "max_prompt_length, shorten the prompt, or set "
                        "drop_long_prompts=true to skip such rows"
                    )
                too_long += 1
                continue
            prompt = str(messages[-1]["content"])
            extra = {MESSAGES: messages} if isinstance(row[self.prompt_field], list) else {}
            prepared.append({**row, "prompt": prompt, "prompt_ids": list(ids), **extra})
        if too_long:
            log.warning(
                "dropped %d of %d %s prompts longer than max_prompt_length=%d",
                too_long,
                len(rows),
                name,
                self.max_prompt_length,
            )
        if not prepared and rows:
            raise ValueError(
                f"every {name} prompt was longer than max_prompt_length={self.max_prompt_length}"
            )
        return prepared

    def _messages(self, value: Any, where: str) -> list[dict[str, str]]:
        """The chat messages of a prompt column's value: a question (text), or the messages
        themselves (the verl/SkyRL format), the suffix added to the last one and the system
        prompt before them unless they have their own."""
        if not isinstance(value, list):
            value = [{"role": "user", "content": str(value)}]
        if not value or not all(
            isinstance(m, dict) and {"role", "content"} <= set(m) for m in value
        ):
            raise ValueError(
                f"{where}'s '{self.prompt_field}' is a list but not of chat messages "
                '({"role": ..., "content": ...}): give a question or a list of messages'
            )
        messages = [dict(m) for m in value]
        messages[-1]["content"] = str(messages[-1]["content"]) + self.prompt_suffix
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def setup(self, stage: str) -> None:
        if self.train_rows or self.val_rows:
            return
        train, val = self._raw_rows()
        self.train_rows = self.prepare(train, "train")
        self.val_rows = self.prepare(val, "validation")
        processes = self.trainer.world_size if self.trainer else 1
        if stage == "fit" and len(self.train_rows) < self.batch_size * processes:
            raise ValueError(
                f"train_data '{self.train_data}' gives {len(self.train_rows)} prompts, fewer "
                f"than one batch (batch_size={self.batch_size} x {processes} processes), so "
                "nothing would be trained: use more data or a smaller batch_size"
            )

    def collate(self, rows: list[Row]) -> dict[str, Any]:
        padded = self.tokenizer.pad(
            {"input_ids": [r["prompt_ids"] for r in rows]}, padding=True, return_tensors="pt"
        )
        fields = {key: [r[key] for r in rows] for key in rows[0] if key != "prompt_ids"}
        return {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            **fields,
        }

    def train_dataloader(self) -> ResumableDataLoader:
        # Resumable: checkpoints hold the position inside the epoch. Each epoch's order is a
        # function of seed + epoch; under DDP/FSDP every process reads its own slice.
        trainer = self.trainer
        sampler = ResumableSampler(
            len(self.train_rows),
            self.seed,
            rank=trainer.global_rank if trainer else 0,
            num_replicas=trainer.world_size if trainer else 1,
        )
        return ResumableDataLoader(
            self.train_rows,
            sampler,
            batch_size=self.batch_size,
            drop_last=True,
            collate_fn=self.collate,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_rows:
            return []
        return DataLoader(self.val_rows, batch_size=self.val_batch_size, collate_fn=self.collate)
