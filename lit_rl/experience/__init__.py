"""The experience layer: one pipeline from prompts to an ``Experience`` every algorithm trains on,
and the typed path it takes to the update.

``make_experience`` runs sample -> reward -> logprobs/values -> reward shaping -> advantage
estimator for a module that implements ``ExperienceModule``; estimators are pluggable; the
``ExperienceHandoff`` carries the result to ``training_step`` and its ``UpdateResult`` back.
"""

from lit_rl.experience.contract import (
    ExperienceModule,
    LogprobsAndValues,
    PolicyOwner,
    missing_members,
    require_members,
)
from lit_rl.experience.dynamic_sampling import DynamicSampling
from lit_rl.experience.estimators import (
    GAE,
    AdvantageEstimator,
    AdvantageInputs,
    GroupNormalized,
    LeaveOneOut,
    ProcessSupervised,
    ReinforcePlusPlus,
    check_estimator,
)
from lit_rl.experience.experience import Experience, concatenate
from lit_rl.experience.handoff import ExperienceHandoff, TrainedBatch, UpdateResult
from lit_rl.experience.pipeline import PromptBatch, make_experience
from lit_rl.experience.spec import ExperienceSpec, Overlong
from lit_rl.experience.steps import token_char_ends, token_step_ends

__all__ = [
    "GAE",
    "AdvantageEstimator",
    "AdvantageInputs",
    "DynamicSampling",
    "Experience",
    "ExperienceHandoff",
    "ExperienceModule",
    "ExperienceSpec",
    "GroupNormalized",
    "LeaveOneOut",
    "LogprobsAndValues",
    "Overlong",
    "PolicyOwner",
    "ProcessSupervised",
    "PromptBatch",
    "ReinforcePlusPlus",
    "TrainedBatch",
    "UpdateResult",
    "check_estimator",
    "concatenate",
    "make_experience",
    "missing_members",
    "require_members",
    "token_char_ends",
    "token_step_ends",
]
