"""Rollout engines behind one interface with a lifecycle, and the check of what they sample."""

from lit_rl.rollout.check import LogprobCheck, SamplerMismatchError, SamplerMismatchWarning
from lit_rl.rollout.completions import Completions, CompletionSampler, WholeWeights
from lit_rl.rollout.default import default_engine
from lit_rl.rollout.engine import (
    NOT_SYNCED,
    InProcessEngine,
    ProbesSyncs,
    RolloutEngine,
    SamplesAhead,
    completion_mask_from_eos,
)
from lit_rl.rollout.episodes import EpisodeCompletions, EpisodeSampler
from lit_rl.rollout.fingerprint import (
    adapter_fingerprint,
    dense_fingerprint,
    dense_weights,
    policy_adapters,
    policy_fingerprint,
)
from lit_rl.rollout.hf_engine import HFGenerateEngine
from lit_rl.rollout.packed_engine import PackedEngine
from lit_rl.rollout.request import Generation, GenerationRequest, SamplingParams
from lit_rl.rollout.server_engine import VLLMServerEngine
from lit_rl.rollout.session import EngineSession, StaleWeightsError
from lit_rl.rollout.stops import StopStrings
from lit_rl.rollout.vllm_engine import VLLMEngine
from lit_rl.rollout.vllm_server import ServerError, ServerLaunch

__all__ = [
    "NOT_SYNCED",
    "CompletionSampler",
    "Completions",
    "EngineSession",
    "EpisodeCompletions",
    "EpisodeSampler",
    "Generation",
    "GenerationRequest",
    "HFGenerateEngine",
    "InProcessEngine",
    "LogprobCheck",
    "PackedEngine",
    "ProbesSyncs",
    "RolloutEngine",
    "SamplerMismatchError",
    "SamplerMismatchWarning",
    "SamplesAhead",
    "SamplingParams",
    "ServerError",
    "ServerLaunch",
    "StopStrings",
    "StaleWeightsError",
    "VLLMEngine",
    "VLLMServerEngine",
    "adapter_fingerprint",
    "dense_fingerprint",
    "dense_weights",
    "policy_adapters",
    "policy_fingerprint",
    "WholeWeights",
    "completion_mask_from_eos",
    "default_engine",
]
