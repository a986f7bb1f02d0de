"""RewardModel on a tiny local sequence classifier: each completion's score is the model's
logit at the last token of its conversation, batched with left padding or alone alike."""

import pytest
import torch
from transformers import LlamaForSequenceClassification

from lit_rl.rewards import RewardModel, check_reward_output
from tests.conftest import build_tokenizer, save_tiny_reward_model

PROMPTS = ["What is 2 + 3?", "What is 2 + 3?", "Name a colour."]
COMPLETIONS = ["5", "2 + 3 = 5, so the answer is 5.", "Blue."]


def _score_alone(directory, text: str) -> float:
    """The classifier's logit at the last token of ``text``, one row, no padding."""
    model = LlamaForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = build_tokenizer()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0, 0].item()


def test_scores_are_the_models_logit_at_each_conversations_end(tiny_reward_model_dir):
    reward = RewardModel(str(tiny_reward_model_dir), batch_size=2)  # rows of 3 lengths, padded
    output = check_reward_output(reward(PROMPTS, COMPLETIONS, {}), reward, 3, "test")
    template = build_tokenizer()
    for i, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        conversation = template.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
        assert reward.conversation(prompt, completion) == conversation
        assert output.total[i].item() == pytest.approx(
            _score_alone(tiny_reward_model_dir, conversation), abs=1e-5
        )
    assert torch.equal(output.components["reward_model"], output.total)
    squashed = RewardModel(str(tiny_reward_model_dir), sigmoid=True, scale=2.0)(
        PROMPTS, COMPLETIONS, {}
    )
    torch.testing.assert_close(squashed.total, 2 * torch.sigmoid(output.total), atol=1e-6, rtol=0)


def test_without_a_chat_template_and_bad_models(tmp_path):
    plain = save_tiny_reward_model(tmp_path / "plain", chat_template=False)
    reward = RewardModel(str(plain), query_separator=" => ")
    assert reward.conversation("Q", "A") == "Q => A"
    total = reward(["Q"], ["A"], {}).total
    assert total.item() == pytest.approx(_score_alone(plain, "Q => A"), abs=1e-5)
    two_labels = save_tiny_reward_model(tmp_path / "two", num_labels=2)
    with pytest.raises(ValueError, match="has 2 labels; a reward model has one"):
        RewardModel(str(two_labels))
