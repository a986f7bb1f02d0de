"""Rows made by code: a RowSource as train_data (its validation rows held out from training),
EnvironmentRows for environments that write their own prompts (prompt_field null)."""

import pytest
import torch

from lit_rl.data import EnvironmentRows, PromptDataModule, RowSource


class Repeating(RowSource):
    """Questions "q0".."q9" for training; validation repeats q8 and q9 and adds q10, q11."""

    def rows(self, split):
        numbers = range(10) if split == "train" else (8, 9, 10, 11)
        return [{"question": f"q{n}", "answer": str(n)} for n in numbers]


def test_a_row_sources_validation_rows_are_held_out(tiny_model_dir):
    data = PromptDataModule(str(tiny_model_dir), Repeating(), batch_size=2)
    data.setup("fit")
    assert [row["question"] for row in data.val_rows] == ["q10", "q11"]
    assert [row["question"] for row in data.train_rows] == [f"q{n}" for n in range(10)]
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and set(batch["answer"]) <= {str(n) for n in range(10)}


def test_environment_rows_are_seeds_disjoint_and_the_same_every_time():
    source = EnvironmentRows(num_train=50, num_val=20, seed=3)
    train, val = source.rows("train"), source.rows("validation")
    assert len(train) == 50 and len(val) == 20 and all(set(row) == {"seed"} for row in train)
    assert not {row["seed"] for row in train} & {row["seed"] for row in val}
    assert source.rows("train") == train and EnvironmentRows(50, 20, seed=4).rows("train") != train
    with pytest.raises(ValueError, match="num_train >= 1"):
        EnvironmentRows(num_train=0)


def test_without_a_prompt_field_nothing_is_rendered_and_single_completions_are_refused(
    tiny_model_dir,
):
    data = PromptDataModule(
        str(tiny_model_dir), EnvironmentRows(8, 2), prompt_field=None, batch_size=2
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (2, 0) and batch["prompt"] == ["", ""]
    assert len(batch["seed"]) == 2 and len(data.val_rows) == 2

    from lit_rl.models import load_model, load_tokenizer
    from lit_rl.rollout import CompletionSampler, SamplingParams
    from tests.environments.toy import TurnEngine

    tokenizer = load_tokenizer(str(tiny_model_dir))
    sampler = CompletionSampler(
        TurnEngine(tokenizer, ["x"]),
        load_model(str(tiny_model_dir)),
        tokenizer,
        (tokenizer.eos_token_id,),
        SamplingParams(4),
    )
    with pytest.raises(ValueError, match="the prompts are empty.*set the module's episodes"):
        sampler.rollouts(batch | {"input_ids": torch.zeros(2, 0, dtype=torch.long)}, 2, 0)
