"""The typed contract between the rollout side (``RolloutCallback``, the other callbacks) and the
LightningModule it drives: what the module offers (``PolicyOwner``, ``ExperienceModule``), what
its models say about sampled tokens (``LogprobsAndValues``), and the check callbacks make."""

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from lit_rl.experience.handoff import ExperienceHandoff
from lit_rl.experience.spec import ExperienceSpec
from lit_rl.models import ModelRecipe, PolicyModels, Sequences
from lit_rl.rewards import RewardFn
from lit_rl.rollout import CompletionSampler


@dataclass(frozen=True)
class LogprobsAndValues:
    """What the module's models say about the sampled tokens at rollout time, [N, T] each."""

    old_logprobs: torch.Tensor | None  # pi_old, when the update is not purely on-policy
    ref_logprobs: torch.Tensor | None  # pi_ref, when there is a reference
    values: torch.Tensor | None  # V(s_t), when there is a critic


class PolicyOwner(Protocol):
    """A module that builds its networks from a ``ModelRecipe`` (``PolicyCheckpoint`` exports
    them, ``ReferenceSyncCallback`` moves the reference); ``lit_rl.modules.PolicyModule``."""

    tokenizer: PreTrainedTokenizerBase
    model_recipe: ModelRecipe  # what configure_model builds, known before it runs
    models: PolicyModels | None  # built in configure_model


class ExperienceModule(PolicyOwner, Protocol):
    """What the rollout driver needs from a module: how to sample, reward and score rollouts,
    and where to hand the Experience over (``lit_rl.modules.PolicyModule``)."""

    reward: RewardFn
    handoff: ExperienceHandoff  # RolloutCallback -> training_step -> callbacks at batch end

    @property
    def sampler(self) -> CompletionSampler: ...  # over the models configure_model built

    @property
    def global_step(self) -> int: ...  # optimizer steps taken: the version of the weights

    def experience_spec(self) -> ExperienceSpec: ...

    def logprobs_and_values(self, sequences: Sequences) -> LogprobsAndValues: ...


def missing_members(module: object, protocol: type) -> list[str]:
    """The members of ``protocol`` (its annotations and methods, its bases' included) that
    ``module`` lacks; empty when it implements it.

    Not ``isinstance`` on a runtime-checkable protocol: from Python 3.12 that looks members up
    statically, and an ``nn.Module`` keeps its submodules where a static lookup cannot see
    them, so a correct module would be refused.
    """
    members: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        members += [name for name in getattr(cls, "__annotations__", {}) if name not in members]
        members += [
            name
            for name, value in vars(cls).items()
            if (callable(value) or isinstance(value, property))
            and not name.startswith("_")
            and name not in members
        ]
    # The class first: a property (e.g. the sampler, built in configure_model) may not be
    # readable yet when a callback checks the contract in setup.
    return [name for name in members if not (hasattr(type(module), name) or hasattr(module, name))]


def require_members(module: object, protocol: type, needed_by: str, hint: str = "") -> None:
    """Refuse ``module`` unless it implements ``protocol``, naming what it lacks (a callback's
    check in ``setup``, before any model loads); ``hint`` says what to use instead."""
    missing = missing_members(module, protocol)
    if missing:
        raise TypeError(
            f"{needed_by} needs a module that implements lit_rl.experience.{protocol.__name__} "
            f"(e.g. lit_rl.modules.GRPOModule); {type(module).__name__} lacks "
            f"{', '.join(missing)}{hint}"
        )
