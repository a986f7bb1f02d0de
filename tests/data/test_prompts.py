import json

import pytest
import torch
from datasets import Dataset

from lit_rl.data import PromptDataModule


def test_embedded_math_batches_are_left_padded_chat_prompts(tiny_model_dir):
    dm = PromptDataModule(
        tokenizer=str(tiny_model_dir),
        batch_size=4,
        num_train=40,
        num_val=10,
        prompt_suffix=" Answer: <n>",
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["input_ids"].shape[0] == 4
        and batch["attention_mask"].shape == batch["input_ids"].shape
    )
    assert (
        batch["attention_mask"][:, -1] == 1
    ).all()  # left padding: every prompt ends at the right
    text = dm.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert batch["prompt"][0].endswith(" Answer: <n>") and batch["prompt"][0] in text
    assert len(batch["answer"]) == 4 and all(a.isdigit() for a in batch["answer"])
    assert len(dm.val_rows) == 10
    val = next(iter(dm.val_dataloader()))
    assert len(val["prompt"]) == 10


def test_shuffle_is_seeded(tiny_model_dir):
    def first_prompts(seed):
        dm = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=8, num_train=64, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))["prompt"]

    assert first_prompts(0) == first_prompts(0)
    assert first_prompts(0) != first_prompts(1)


def _gsm8k_rows():
    return [
        {
            "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
            "answer": "She sold 48/2 = 24 in May.\n48 + 24 = 72\n#### 72",
        },
        {
            "question": "Weng earns $12 an hour. How much for 50 minutes?",
            "answer": "12/60*50 = 10\n#### 10",
        },
    ]


def test_gsm8k_shaped_jsonl_and_parquet(tiny_model_dir, tmp_path):
    jsonl = tmp_path / "gsm8k.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in _gsm8k_rows()))
    parquet = tmp_path / "gsm8k.parquet"
    Dataset.from_list(_gsm8k_rows()).to_parquet(str(parquet))
    for path in (jsonl, parquet):
        dm = PromptDataModule(
            tokenizer=str(tiny_model_dir), train_data=str(path), val_data=str(path), batch_size=2
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert sorted(batch["answer"], key=len)[0].endswith("#### 10")
        assert len(dm.val_rows) == 2


def test_custom_prompt_field_and_missing_field_error(tiny_model_dir, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"problem": "2+2?", "solution": "4"}) + "\n")
    dm = PromptDataModule(
        tokenizer=str(tiny_model_dir), train_data=str(path), prompt_field="problem", batch_size=1
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["solution"] == ["4"]
    bad = PromptDataModule(tokenizer=str(tiny_model_dir), train_data=str(path), batch_size=1)
    with pytest.raises(KeyError, match="no field 'question'.*set prompt_field"):
        bad.setup("fit")


def test_prompt_longer_than_context_errors_or_is_dropped(tiny_model_dir, tmp_path, caplog):
    path = tmp_path / "data.jsonl"
    rows = [{"question": "short"}, {"question": "x" * 500}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PromptDataModule(
        tokenizer=str(tiny_model_dir), train_data=str(path), batch_size=1, max_prompt_length=64
    )
    with pytest.raises(
        ValueError, match="row 1 is .* tokens.*max_prompt_length=64.*drop_long_prompts"
    ):
        dm.setup("fit")
    dm = PromptDataModule(
        tokenizer=str(tiny_model_dir),
        train_data=str(path),
        batch_size=1,
        max_prompt_length=64,
        drop_long_prompts=True,
    )
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert len(dm.train_rows) == 1 and "dropped 1 of 2 train prompts" in caplog.text


def test_missing_data_file_and_bad_values(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptDataModule(tokenizer=str(tiny_model_dir), train_data=str(tmp_path / "x.jsonl")).setup(
            "fit"
        )
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=0)


def test_collate_keeps_tensor_dtypes(tiny_model_dir):
    dm = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=4, num_val=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].dtype == torch.long


def test_a_prompt_column_of_chat_messages_is_rendered_as_given_and_kept(tiny_model_dir, tmp_path):
    # The verl/SkyRL format: the prompt column holds the messages. They are rendered as given
    # (the suffix on the last one), kept in the row's messages; prompt is the last one's text.
    rows = [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"{n}+{n}?"},
            ],
            "answer": str(2 * n),
        }
        for n in range(4)
    ]
    path = tmp_path / "messages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PromptDataModule(
        str(tiny_model_dir), str(path), prompt_field="prompt", prompt_suffix=" Answer:",
        system_prompt="unused: the rows have their own", batch_size=2,
    )  # fmt: skip
    data.setup("fit")
    row = next(r for r in data.train_rows if r["answer"] == "2")
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+1? Answer:"},
    ]
    assert row["messages"] == expected and row["prompt"] == "1+1? Answer:"
    text = data.tokenizer.apply_chat_template(expected, add_generation_prompt=True, tokenize=False)
    assert row["prompt_ids"] == data.tokenizer(text, add_special_tokens=False).input_ids
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": ["not", "messages"]}) + "\n")
    with pytest.raises(
        ValueError, match="train row 0's 'prompt' is a list but not of chat messages"
    ):
        PromptDataModule(str(tiny_model_dir), str(bad), prompt_field="prompt").setup("fit")
