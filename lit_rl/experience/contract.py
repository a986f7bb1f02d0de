"""The typed contract between the experience pipeline and the LightningModule it serves."""

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from lit_rl.algorithms import KLEstimator
from lit_rl.experience.estimators import AdvantageEstimator
from lit_rl.models import Sequences
from lit_rl.rewards import RewardOutput
from lit_rl.rollout import Generation, GenerationRequest, RolloutEngine, SamplingParams

# The key under which the driver hands a prompt batch's Experience to ``training_step``.
EXPERIENCE_KEY = "experience"


@dataclass(frozen=True)
class ExperienceSpec:
    """What an algorithm asks of the pipeline for the next rollout batch.

    ``kl_coef > 0`` folds ``kl_coef * KL(pi_old || pi_ref)`` (``kl_estimator`` per token) into
    the per-token reward before the estimator runs (PPO, REINFORCE++; 0 keeps the KL out of the
    reward). ``overlong_buffer_length > 0`` adds DAPO's soft overlong penalty to the reward;
    ``mask_truncated_completions`` leaves completions without an EOS out of the loss.
    """

    num_generations: int  # G
    sampling: SamplingParams
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    estimator: AdvantageEstimator
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k1"
    overlong_buffer_length: int = 0  # DAPO Eq. 13's L_cache; 0 = no overlong penalty
    overlong_penalty_factor: float = 1.0
    mask_truncated_completions: bool = False  # truncated rows leave the loss (DAPO)


@dataclass(frozen=True)
class TokenScores:
    """Per-token quantities of the sampled completions under the module's models, [N, T]."""

    old_logprobs: torch.Tensor | None  # pi_old, when the update is not purely on-policy
    ref_logprobs: torch.Tensor | None  # pi_ref, when there is a reference
    values: torch.Tensor | None  # V(s_t), when there is a critic


class ExperienceModule(Protocol):
    """What the pipeline needs from a LightningModule (``lit_rl.modules.PolicyModule``)."""

    policy: nn.Module  # the policy network (its config: context length)
    tokenizer: PreTrainedTokenizerBase
    engine: RolloutEngine | None  # the run's engine (named in the check's messages)

    def experience_spec(self) -> ExperienceSpec: ...

    def generate(self, request: GenerationRequest) -> Generation: ...  # by the run's engine

    def decode_completions(
        self, completion_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[str]]: ...  # ([N, T] bool completion mask, N texts)

    def score(
        self, prompts: list[str], completions: list[str], batch: dict[str, list[Any]], where: str
    ) -> RewardOutput: ...

    def score_tokens(self, sequences: Sequences) -> TokenScores: ...


def missing_experience_members(module: object) -> list[str]:
    """The ``ExperienceModule`` members ``module`` lacks (empty when it implements it).

    Not ``isinstance`` on a runtime-checkable protocol: from Python 3.12 that looks members up
    statically, and an ``nn.Module`` keeps its submodules (``policy``) where a static lookup
    cannot see them, so a correct module would be refused.
    """
    members = [*ExperienceModule.__annotations__]
    members += [
        name
        for name, value in vars(ExperienceModule).items()
        if callable(value) and not name.startswith("_")
    ]
    # The class first: a property (the policy, built in configure_model) may not be readable
    # yet when a callback checks the contract in setup.
    return [name for name in members if not (hasattr(type(module), name) or hasattr(module, name))]
