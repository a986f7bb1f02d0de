"""The experience layer: one pipeline from prompts to an ``Experience`` every algorithm trains on.

``make_experience`` runs generate -> score -> logprobs/values -> reward shaping -> advantage
estimator for a module that implements ``ExperienceModule``; estimators are pluggable.
"""

from lit_rl.experience.contract import (
    EXPERIENCE_KEY,
    ExperienceModule,
    ExperienceSpec,
    TokenScores,
    missing_experience_members,
)
from lit_rl.experience.dynamic_sampling import Draw, DynamicSampling
from lit_rl.experience.estimators import (
    GAE,
    AdvantageEstimator,
    AdvantageInputs,
    GroupNormalized,
    LeaveOneOut,
    ProcessSupervised,
    ReinforcePlusPlus,
)
from lit_rl.experience.experience import Experience, concatenate
from lit_rl.experience.pipeline import PromptBatch, make_experience
from lit_rl.experience.steps import stopped_at_eos, token_char_ends, token_step_ends

__all__ = [
    "EXPERIENCE_KEY",
    "GAE",
    "AdvantageEstimator",
    "AdvantageInputs",
    "Draw",
    "DynamicSampling",
    "Experience",
    "ExperienceModule",
    "ExperienceSpec",
    "GroupNormalized",
    "LeaveOneOut",
    "ProcessSupervised",
    "PromptBatch",
    "ReinforcePlusPlus",
    "TokenScores",
    "concatenate",
    "make_experience",
    "missing_experience_members",
    "stopped_at_eos",
    "token_char_ends",
    "token_step_ends",
]
