"""reasoning-gym's datasets as rows and reward, against the real reasoning_gym: disjoint,
reproducible splits; its own scorer on the tagged answer; a GRPO step on its rows."""

import pytest
import reasoning_gym
import torch

from lit_rl.data import PromptDataModule
from lit_rl.integrations.reasoning_gym import ReasoningGymReward, ReasoningGymRows

pytestmark = pytest.mark.integrations


def test_the_splits_are_the_datasets_items_disjoint_and_reproducible():
    source = ReasoningGymRows(
        "chain_sum", {"min_terms": 2, "max_terms": 3}, num_train=20, num_val=5, seed=4
    )
    train, val = source.rows("train"), source.rows("validation")
    data = reasoning_gym.create_dataset("chain_sum", seed=4, size=25, min_terms=2, max_terms=3)
    assert [row["question"] for row in train + val] == [data[i]["question"] for i in range(25)]
    assert [row["answer"] for row in train] == [data[i]["answer"] for i in range(20)]
    assert source.rows("train") == train  # the same rows every call: resumable
    assert train[0]["entry"]["metadata"]["source_dataset"] == "chain_sum"


def test_the_data_module_keeps_held_out_rows_held_out(tiny_model_dir):
    # basic_arithmetic with one small range repeats itself: validation rows that are also
    # training prompts are dropped.
    source = ReasoningGymRows(
        "basic_arithmetic",
        {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        num_train=300,
        num_val=100,
    )
    data = PromptDataModule(str(tiny_model_dir), source, batch_size=2, num_val=100)
    data.setup("fit")
    train = {row["question"] for row in data.train_rows}
    assert data.val_rows and not any(row["question"] in train for row in data.val_rows)
    assert len(data.val_rows) < 100  # some were copies of training prompts
    batch = next(iter(data.train_dataloader()))
    assert set(batch) >= {"question", "answer", "entry", "prompt"}


def test_the_reward_is_reasoning_gyms_own_score_of_the_tagged_answer():
    composite = ReasoningGymRows(
        "composite",
        {
            "datasets": [
                {"name": "chain_sum", "weight": 1.0, "config": {}},
                {"name": "basic_arithmetic", "weight": 1.0, "config": {}},
            ]
        },
        num_train=6,
        num_val=0,
    )
    rows = composite.rows("train")
    assert {row["entry"]["metadata"]["source_dataset"] for row in rows} == {
        "chain_sum",
        "basic_arithmetic",
    }
    completions = [f"so <answer>{row['answer']}</answer>" for row in rows]
    completions[1] = rows[1]["answer"]  # no tags: no answer
    completions[2] = "<answer>-99999</answer>"
    batch = {"entry": [row["entry"] for row in rows]}
    out = ReasoningGymReward()(["q"] * 6, completions, batch)
    expected = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert torch.equal(out.total, expected) and torch.equal(
        out.components["reasoning_gym"], expected
    )
    # The same numbers as reasoning-gym's own dataset and extract_answer.
    from reasoning_gym.utils import extract_answer

    scorer = reasoning_gym.get_score_answer_fn
    own = [
        scorer(r["entry"]["metadata"]["source_dataset"])(extract_answer(c), r["entry"])
        for r, c in zip(rows, completions, strict=True)
    ]
    assert out.total.tolist() == own
