"""A learned process reward model (PRM): a network scores every step of a completion."""

from typing import Literal

import torch
from transformers import AutoModelForTokenClassification, PreTrainedModel

from lit_rl.models import load_model, load_tokenizer, resolve_model_path
from lit_rl.rewards.base import (
    Batch,
    RewardFn,
    RewardOutput,
    Step,
    check_reward_output,
    steps_output,
)

PRMHead = Literal["causal_lm", "classifier"]


class ProcessRewardModel:
    """Scores each step of a completion with a process reward model, for
    ``lit_rl.experience.ProcessSupervised`` (DeepSeekMath §4.1.3).

    A completion's steps are its pieces between ``step_separator`` (empty pieces skipped). The
    model reads ``prompt + query_separator + completion`` with ``step_tag`` written after every
    step, and its output at each tag's last token scores that step in [0, 1]:

    - ``head="causal_lm"`` (Math-Shepherd, Wang et al., 2024): the next-token distribution
      there, ``p(good_token) / (p(good_token) + p(bad_token))``;
    - ``head="classifier"`` (a token-classification PRM): the probability of
      ``positive_label`` (softmax over the labels; sigmoid with one label).

    Step ends are the character offsets of each step's text in the completion (the last step
    ends at the end of the text, which the pipeline maps to the EOS token).

    ``total`` is ``outcome``'s total when an outcome reward is given (e.g. ``MathCorrectness``,
    whose components are kept), else the lowest step score, as Math-Shepherd ranks solutions.

    Args:
        model: a hub id or local directory of the PRM.
        head: how the model scores a step (above).
        step_separator: what separates a completion's steps.
        step_tag: the marker written after each step, where the model is read.
        query_separator: between the prompt and the completion.
        good_token, bad_token: the ``causal_lm`` head's two candidate next tokens (one token
            each in the PRM's vocabulary).
        positive_label: the ``classifier`` head's label of a good step.
        outcome: an outcome reward whose total becomes ``total``.
        batch_size: completions scored per forward pass.
        device: where the PRM runs.
    """

    def __init__(
        self,
        model: str,
        head: PRMHead = "causal_lm",
        step_separator: str = "\n",
        step_tag: str = " ки",
        query_separator: str = "\n",
        good_token: str = "+",
        bad_token: str = "-",
        positive_label: int = 1,
        outcome: RewardFn | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        name: str = "prm",
    ) -> None:
        if head not in ("causal_lm", "classifier"):
            raise ValueError(
                f"ProcessRewardModel: head must be causal_lm or classifier, got {head!r}"
            )
        if not step_separator or not step_tag:
            raise ValueError("ProcessRewardModel: step_separator and step_tag must not be empty")
        self.tokenizer = load_tokenizer(model)
        network: PreTrainedModel = (
            load_model(model)
            if head == "causal_lm"
            else AutoModelForTokenClassification.from_pretrained(resolve_model_path(model))
        )
        self.model = network.to(device).eval()
        self.head = head
        self.step_separator = step_separator
        self.step_tag = step_tag
        self.query_separator = query_separator
        # The causal-LM head's two candidate next tokens; a classifier reads labels instead.
        self.candidate_ids = (
            [self._single_token(good_token), self._single_token(bad_token)]
            if head == "causal_lm"
            else []
        )
        num_labels = getattr(self.model.config, "num_labels", 1)
        if head == "classifier" and not 0 <= positive_label < max(2, num_labels):
            raise ValueError(
                f"ProcessRewardModel: positive_label {positive_label} is not one of the "
                f"classifier's {num_labels} labels"
            )
        self.positive_label = positive_label
        self.outcome = outcome
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.name = name

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(
                f"ProcessRewardModel: {text!r} is {len(ids)} tokens in the PRM's vocabulary; "
                "good_token and bad_token must be one token each"
            )
        return ids[0]

    def split_steps(self, completion: str) -> list[tuple[int, int]]:
        """The (start, end) character spans of ``completion``'s non-empty steps."""
        spans, start = [], 0
        for piece in completion.split(self.step_separator):
            end = start + len(piece)
            if piece.strip():
                spans.append((start, end))
            start = end + len(self.step_separator)
        return spans

    def tagged_query(self, prompt: str, completion: str) -> tuple[str, list[int]]:
        """The PRM's input text and the character offset where each step's tag ends."""
        text = prompt + self.query_separator
        tag_ends, position = [], 0
        for _, end in self.split_steps(completion):
            text += completion[position:end] + self.step_tag
            tag_ends.append(len(text))
            position = end
        return text + completion[position:], tag_ends

    @torch.no_grad()
    def step_scores(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """Every completion's step scores in [0, 1], in step order."""
        scores: list[list[float]] = []
        for first in range(0, len(completions), self.batch_size):
            queries = [
                self.tagged_query(p, c)
                for p, c in zip(
                    prompts[first : first + self.batch_size],
                    completions[first : first + self.batch_size],
                    strict=True,
                )
            ]
            encoded = self.tokenizer(
                [text for text, _ in queries],
                padding=True,
                padding_side="right",
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets = encoded.pop("offset_mapping")  # [B, L, 2] character spans per token
            outputs = self.model(**encoded.to(self.device)).logits.float().cpu()  # [B, L, *]
            for row, (_, tag_ends) in enumerate(queries):
                token_ends = offsets[row, :, 1]
                real = encoded["attention_mask"][row].bool().cpu()
                # The token holding each tag's last character.
                positions = [int(((token_ends >= end) & real).nonzero()[0]) for end in tag_ends]
                scores.append(self._score(outputs[row, positions]).tolist())
        return scores

    def _score(self, logits: torch.Tensor) -> torch.Tensor:  # [steps, V or labels] -> [steps]
        if self.head == "causal_lm":
            return logits[:, self.candidate_ids].softmax(dim=-1)[:, 0]
        if logits.shape[-1] == 1:
            return logits[:, 0].sigmoid()
        return logits.softmax(dim=-1)[:, self.positive_label]

    def __call__(self, prompts: list[str], completions: list[str], batch: Batch) -> RewardOutput:
        scores = self.step_scores(prompts, completions)
        steps: list[list[Step]] = []
        for text, row in zip(completions, scores, strict=True):
            # The last step runs to the end of the text (its separators and any tail).
            ends = [end for _, end in self.split_steps(text)][:-1] + [len(text)]
            steps.append(list(zip(row, ends[: len(row)], strict=True)))
        lowest = torch.tensor([min(row, default=0.0) for row in scores])
        components = {f"{self.name}/min_step": lowest}
        if self.outcome is None:
            return steps_output(lowest, steps, components)
        outcome = check_reward_output(
            self.outcome(prompts, completions, batch),
            self.outcome,
            len(completions),
            "the ProcessRewardModel's outcome reward",
        )
        return steps_output(outcome.total, steps, {**outcome.components, **components})
