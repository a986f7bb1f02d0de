"""A learned outcome reward model: a sequence classifier scores each (prompt, completion)."""

import torch
from transformers import AutoModelForSequenceClassification

from lit_rl.models import load_tokenizer, resolve_model_path
from lit_rl.rewards.base import Batch, RewardOutput


class RewardModel:
    """The score of a reward model (``AutoModelForSequenceClassification`` with one label,
    as Bradley-Terry reward models are trained, e.g. Skywork-Reward or the reward models TRL's
    ``RewardTrainer`` writes) for each completion, read at its last token.

    The model reads the conversation ``[user: prompt, assistant: completion]`` through its own
    chat template when its tokenizer has one (reward models are trained on their template),
    else ``prompt + query_separator + completion``. The score is the raw logit, optionally
    squashed by a sigmoid into (0, 1) (``sigmoid: true``) and scaled by ``scale``.

    Args:
        model: a hub id or local directory of the reward model.
        query_separator: between the prompt and the completion when there is no chat template.
        sigmoid: map the logit into (0, 1) before scaling.
        scale: a factor on the score (e.g. to weigh it against a rule-based reward).
        max_length: tokens of each conversation the model reads (the end is kept).
        batch_size: conversations per forward pass.
        device: where the model runs.
    """

    def __init__(
        self,
        model: str,
        query_separator: str = "\n",
        sigmoid: bool = False,
        scale: float = 1.0,
        max_length: int = 2048,
        batch_size: int = 8,
        device: str = "cpu",
        name: str = "reward_model",
    ) -> None:
        self.tokenizer = load_tokenizer(model)  # left padding: every row ends at the last column
        self.tokenizer.truncation_side = "left"  # too long: the completion's end is kept
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(model), dtype=torch.float32
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"RewardModel: '{model}' has {self.model.config.num_labels} labels; a reward "
                "model has one (its score); a step scorer is ProcessRewardModel"
            )
        if self.model.config.pad_token_id is None:  # where the model finds each row's end
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.query_separator = query_separator
        self.sigmoid = sigmoid
        self.scale = scale
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.name = name

    def conversation(self, prompt: str, completion: str) -> str:
        """The text the model scores for one completion."""
        if self.tokenizer.chat_template is None:
            return prompt + self.query_separator + completion
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.no_grad()
    def scores(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """[N] float32: the model's score of each completion."""
        texts = [self.conversation(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for first in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(
                texts[first : first + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=self.tokenizer.chat_template is None,  # the template has them
            ).to(self.device)
            scores.append(self.model(**inputs).logits[:, 0].float().cpu())
        score = torch.cat(scores) if scores else torch.zeros(0)
        return (torch.sigmoid(score) if self.sigmoid else score) * self.scale

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        score = self.scores(prompts, completions)
        return RewardOutput(total=score, components={self.name: score})
