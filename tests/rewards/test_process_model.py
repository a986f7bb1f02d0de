"""ProcessRewardModel on tiny local models: where each step is read, its score, the output."""

import pytest
import torch
from transformers import LlamaForTokenClassification

from lit_rl.rewards import MathCorrectness, ProcessRewardModel, check_reward_output
from tests.conftest import build_tiny_model, build_tokenizer, tiny_llama_config

PROMPT = "What is 2 + 3?"
COMPLETION = "2 + 3 = 5\n \nso 5\nAnswer: 5"  # three steps; a blank piece is skipped


@pytest.fixture(scope="module")
def causal_prm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prm-causal")
    tokenizer = build_tokenizer()
    build_tiny_model(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=3
    ).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_prm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prm-classifier")
    tokenizer = build_tokenizer()
    torch.manual_seed(4)
    config = tiny_llama_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, num_labels=2
    )
    LlamaForTokenClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tag_positions(text: str, tag: str) -> list[int]:
    """One token per character: the index of each tag's last character."""
    positions, start = [], 0
    while (found := text.find(tag, start)) >= 0:
        positions.append(found + len(tag) - 1)
        start = found + len(tag)
    return positions


def test_steps_are_split_and_tagged_where_the_model_reads_them(causal_prm):
    prm = ProcessRewardModel(str(causal_prm), step_tag=" #")
    assert prm.split_steps(COMPLETION) == [(0, 9), (12, 16), (17, 26)]
    text, tag_ends = prm.tagged_query(PROMPT, COMPLETION)
    assert text == PROMPT + "\n" + "2 + 3 = 5 #\n \nso 5 #\nAnswer: 5 #"
    assert [text[end - 2 : end] for end in tag_ends] == [" #"] * 3


def test_causal_lm_head_scores_good_against_bad_at_each_tag(causal_prm):
    prm = ProcessRewardModel(str(causal_prm), step_tag=" #", good_token="+", bad_token="-")
    out = prm([PROMPT, PROMPT], [COMPLETION, "one step"], {})
    # By hand: the model's next-token logits at each tag, softmax over ("+", "-").
    tokenizer = build_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, 3)
    text = PROMPT + "\n" + "2 + 3 = 5 #\n \nso 5 #\nAnswer: 5 #"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, _tag_positions(text, " #")]
    plus, minus = tokenizer.convert_tokens_to_ids(["+", "-"])
    expected = torch.softmax(logits[:, [plus, minus]], dim=-1)[:, 0]
    torch.testing.assert_close(out.step_rewards[0], expected, rtol=0, atol=1e-6)
    assert out.step_ends[0].tolist() == [9, 16, len(COMPLETION)]
    assert out.step_ends[1].tolist() == [len("one step"), -1, -1]
    # No outcome reward: the total is the lowest step score (Math-Shepherd's ranking).
    assert out.total[0].item() == pytest.approx(expected.min().item(), abs=1e-6)
    check_reward_output(out, prm, 2, "a test batch")


def test_classifier_head_and_an_outcome_total(classifier_prm):
    prm = ProcessRewardModel(
        str(classifier_prm), head="classifier", step_tag=" #", outcome=MathCorrectness()
    )
    completions = [COMPLETION, "2 + 3 = 6\nAnswer: 6"]
    out = prm([PROMPT] * 2, completions, {"answer": ["5", "5"]})
    assert out.total.tolist() == [1.0, 0.0]
    assert torch.equal(out.components["correctness"], out.total)
    tokenizer = build_tokenizer()
    model = LlamaForTokenClassification.from_pretrained(classifier_prm).eval()
    text = PROMPT + "\n" + "2 + 3 = 6 #\nAnswer: 6 #"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, _tag_positions(text, " #")]
    expected = logits.softmax(dim=-1)[:, 1]
    torch.testing.assert_close(out.step_rewards[1, :2], expected, rtol=0, atol=1e-6)


def test_bad_settings_are_named(causal_prm):
    with pytest.raises(ValueError, match="one token each"):
        ProcessRewardModel(str(causal_prm), good_token="++")
    with pytest.raises(ValueError, match="head must be"):
        ProcessRewardModel(str(causal_prm), head="value")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProcessRewardModel("./no-such-prm")
