"""The experience pipeline: sample -> reward -> logprobs and values -> shaping -> advantages."""

import time
from dataclasses import dataclass
from typing import Any

import torch

from lit_rl.algorithms import kl_penalty, overlong_penalty, token_level_rewards
from lit_rl.experience.contract import ExperienceModule, LogprobsAndValues
from lit_rl.experience.estimators import AdvantageInputs
from lit_rl.experience.experience import Experience
from lit_rl.experience.spec import ExperienceSpec
from lit_rl.experience.steps import token_step_ends
from lit_rl.models import Sequences
from lit_rl.rewards import RewardOutput, call_reward, reward_name
from lit_rl.rollout import Completions, CompletionSampler, EpisodeCompletions

PromptBatch = dict[str, Any]  # input_ids/attention_mask [B, P] (left padded), fields: B-lists


@dataclass(frozen=True)
class Shaped:
    """Per-token rewards and the estimator's advantages and value targets."""

    kl: torch.Tensor | None  # [N, T] the KL to the reference, where it is in the reward
    token_rewards: torch.Tensor  # [N, T]
    advantages: torch.Tensor  # [N, T]
    returns: torch.Tensor | None  # [N, T] value targets (estimators with a critic)


@dataclass(frozen=True)
class Rewards:
    """The rewards of N rollouts as the advantage estimators read them."""

    outcome: torch.Tensor  # [N], with DAPO's overlong penalty where set
    components: dict[str, torch.Tensor]  # name -> [N], for logging
    step_rewards: torch.Tensor | None  # [N, S]
    step_ends: torch.Tensor | None  # [N, S] completion-token index, -1 = padding step


@torch.no_grad()
def make_experience(
    module: ExperienceModule, batch: PromptBatch, where: str, sampled: Completions | None = None
) -> tuple[Experience, dict[str, float]]:
    """Sample G completions per prompt of ``batch`` and turn them into an ``Experience``.

    Returns the experience and the seconds each phase took (``generation``, ``reward``,
    ``logprobs``, ``advantages``). ``where`` names the batch in error messages. ``sampled``:
    the batch's rollouts, sampled already (ahead of the trainer, ``RolloutsAhead``).
    """
    spec = module.experience_spec()
    group_size = spec.num_generations
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    # 1. Sample G rollouts per prompt (prompt-major rows) with the current weights: single
    #    completions, or episodes against an environment (the sampler's choice).
    if sampled is None:
        sampled = module.sampler.rollouts(batch, group_size, version=module.global_step)
    seconds["generation"], start = time.perf_counter() - start, time.perf_counter()

    # 2. Reward: outcome rewards [N], and step rewards [N, S] from a process reward.
    fields = {  # dataset fields, repeated so that row i describes rollout i
        key: [v for v in values for _ in range(group_size)]
        for key, values in batch.items()
        if isinstance(values, list)
    } | sampled.fields
    rewards = score(module, sampled, fields, spec, where)
    seconds["reward"], start = time.perf_counter() - start, time.perf_counter()

    # 3. Log-probabilities under pi_old and pi_ref, values under the critic.
    sequences = Sequences(
        torch.cat([sampled.prompt_ids, sampled.ids], dim=1),
        torch.cat([sampled.prompt_mask, torch.ones_like(sampled.ids)], dim=1),
        sampled.ids.shape[1],
    )
    scored = module.logprobs_and_values(sequences)
    seconds["logprobs"], start = time.perf_counter() - start, time.perf_counter()

    # 4-5. Shaping (the outcome on the last token, the KL folded in if asked) and advantages.
    shaped = estimate(spec, sampled, rewards, scored)
    seconds["advantages"] = time.perf_counter() - start
    return assemble(sequences, sampled, fields["prompt"], rewards, scored, shaped, spec), seconds


def assemble(
    sequences: Sequences,
    sampled: Completions,
    prompts: list[str],
    rewards: Rewards,
    scored: LogprobsAndValues,
    shaped: Shaped,
    spec: ExperienceSpec,
) -> Experience:
    """The ``Experience`` of the phases' results."""
    episodes = sampled if isinstance(sampled, EpisodeCompletions) else None
    return Experience(
        input_ids=sequences.input_ids,
        attention_mask=sequences.attention_mask,
        completion_mask=sampled.mask,
        rewards=rewards.outcome,
        token_rewards=shaped.token_rewards,
        advantages=shaped.advantages,
        returns=shaped.returns,
        old_logprobs=scored.old_logprobs,
        sampler_logprobs=sampled.logprobs,
        ref_logprobs=scored.ref_logprobs,
        values=scored.values,
        kl=shaped.kl,
        step_rewards=rewards.step_rewards,
        step_ends=rewards.step_ends,
        reward_components=rewards.components,
        prompts=prompts,
        completions=episodes.transcripts if episodes is not None else sampled.texts,
        # DAPO's overlong filtering: a truncated completion's tokens leave the loss.
        loss_excluded=sampled.truncated if spec.overlong.mask_truncated_completions else None,
        truncated=sampled.truncated,
        episode_stats=dict(episodes.stats) if episodes is not None else {},
        group_size=spec.num_generations,
        weights_version=sampled.weights_version,
        weights_fingerprint=sampled.weights_fingerprint,
    )


def score(
    module: ExperienceModule,
    sampled: Completions,
    fields: dict[str, list[Any]],
    spec: ExperienceSpec,
    where: str,
) -> Rewards:
    """The module's reward on the sampled rollouts; DAPO's soft overlong punishment added to
    the outcome where set; step ends mapped to completion tokens."""
    reward = call_reward(module.reward, fields["prompt"], sampled.texts, fields, where)
    device = sampled.ids.device
    outcome = reward.total.to(device)
    components = dict(reward.components)
    overlong = spec.overlong
    if overlong.buffer_length > 0:
        penalty = overlong_penalty(
            sampled.mask.sum(dim=1),
            module.sampler.max_rollout_tokens,  # an episode's sampled tokens: its budget
            overlong.buffer_length,
            overlong.penalty_factor,
        ).to(outcome.dtype)
        outcome = outcome + penalty
        components["overlong_penalty"] = penalty
    step_rewards = None if reward.step_rewards is None else reward.step_rewards.to(device)
    step_ends = _step_token_ends(reward, sampled, module.sampler, module.reward)
    return Rewards(outcome, components, step_rewards, step_ends)


def _step_token_ends(
    reward: RewardOutput, sampled: Completions, sampler: CompletionSampler, reward_fn: object
) -> torch.Tensor | None:
    """A process reward's step ends as completion-token indices ([N, S], -1 = padding)."""
    if reward.step_ends is None:
        return None
    if reward.step_ends_in == "tokens":
        return reward.step_ends.to(sampled.ids.device)
    if isinstance(sampled, EpisodeCompletions):
        raise ValueError(
            f"reward '{reward_name(reward_fn)}' returns step rewards at character offsets of "
            "a completion's text, but these rollouts are multi-turn episodes: use "
            "lit_rl.rewards.TurnRewards (each turn's reward where it ends) or an outcome "
            "reward (e.g. lit_rl.rewards.EpisodeReward)"
        )
    stopped = ~sampled.truncated
    return token_step_ends(
        sampled.ids.cpu(),
        sampled.mask.cpu(),
        reward.step_ends.cpu(),
        sampled.texts,
        stopped.cpu(),
        sampler.decode,
    ).to(sampled.ids.device)


def estimate(
    spec: ExperienceSpec, sampled: Completions, rewards: Rewards, scored: LogprobsAndValues
) -> Shaped:
    """The KL to the reference where it is folded into the reward, the per-token rewards, and
    the estimator's advantages and value targets."""
    kl = None
    if spec.kl_coef > 0:
        if scored.old_logprobs is None or scored.ref_logprobs is None:
            raise ValueError(
                "KL in the reward needs old and reference logprobs from logprobs_and_values"
            )
        kl = kl_penalty(scored.old_logprobs, scored.ref_logprobs, spec.kl_estimator)
    token_rewards = token_level_rewards(rewards.outcome, sampled.mask, kl, spec.kl_coef)
    if spec.estimator.needs_values and scored.values is None:
        raise ValueError(
            f"{type(spec.estimator).__name__} needs values, but the module has no critic"
        )
    advantages, returns = spec.estimator(
        AdvantageInputs(
            rewards=rewards.outcome,
            token_rewards=token_rewards,
            completion_mask=sampled.mask,
            group_size=spec.num_generations,
            values=scored.values,
            step_rewards=rewards.step_rewards,
            step_ends=rewards.step_ends,
        )
    )
    return Shaped(kl, token_rewards, advantages, returns)
