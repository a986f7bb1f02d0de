"""The experience pipeline: sample -> reward -> logprobs and values -> shaping -> advantages."""

import time
from typing import Any

import torch

from lit_rl.algorithms import kl_penalty, overlong_penalty, token_level_rewards
from lit_rl.experience.contract import ExperienceModule
from lit_rl.experience.estimators import AdvantageInputs
from lit_rl.experience.experience import Experience
from lit_rl.experience.steps import token_step_ends
from lit_rl.models import Sequences
from lit_rl.rewards import call_reward, reward_name

PromptBatch = dict[str, Any]  # input_ids/attention_mask [B, P] (left padded), fields: B-lists


@torch.no_grad()
def make_experience(
    module: ExperienceModule, batch: PromptBatch, where: str
) -> tuple[Experience, dict[str, float]]:
    """Sample G completions per prompt of ``batch`` and turn them into an ``Experience``.

    Returns the experience and the seconds each phase took (``generation``, ``reward``,
    ``logprobs``, ``advantages``). ``where`` names the batch in error messages.
    """
    spec = module.experience_spec()
    sampler = module.sampler
    group_size = spec.num_generations
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    # 1. Sample G rollouts per prompt (prompt-major rows) with the current weights: single
    #    completions, or episodes against an environment (the sampler's choice).
    sampled = sampler.rollouts(batch, group_size, version=module.global_step)
    completion_ids, completion_mask, completions = sampled.ids, sampled.mask, sampled.texts
    seconds["generation"], start = time.perf_counter() - start, time.perf_counter()

    # 2. Reward: outcome rewards [N], and step rewards [N, S] from a process reward.
    fields = {  # dataset fields, repeated so that row i describes rollout i
        key: [v for v in values for _ in range(group_size)]
        for key, values in batch.items()
        if isinstance(values, list)
    } | sampled.fields
    reward = call_reward(module.reward, fields["prompt"], completions, fields, where)
    device = completion_ids.device
    rewards = reward.total.to(device)
    components = dict(reward.components)
    stopped = ~sampled.truncated  # [N]
    overlong = spec.overlong
    if overlong.buffer_length > 0:  # DAPO's soft overlong punishment, in the reward
        penalty = overlong_penalty(
            completion_mask.sum(dim=1),
            sampler.max_rollout_tokens,  # an episode's sampled tokens: against its budget
            overlong.buffer_length,
            overlong.penalty_factor,
        ).to(rewards.dtype)
        rewards = rewards + penalty
        components["overlong_penalty"] = penalty
    step_rewards = None if reward.step_rewards is None else reward.step_rewards.to(device)
    step_ends = None
    if reward.step_ends is not None:
        if sampled.stats:
            raise ValueError(
                f"reward '{reward_name(module.reward)}' returns step rewards for a completion's "
                "text, but these rollouts are multi-turn episodes: use an outcome reward "
                "(e.g. lit_rl.environments.EpisodeReward) with episodes"
            )
        step_ends = token_step_ends(
            completion_ids.cpu(),
            completion_mask.cpu(),
            reward.step_ends.cpu(),
            completions,
            stopped.cpu(),
            sampler.decode,
        ).to(device)
    seconds["reward"], start = time.perf_counter() - start, time.perf_counter()

    # 3. Log-probabilities under pi_old and pi_ref, values under the critic.
    input_ids = torch.cat([sampled.prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([sampled.prompt_mask, torch.ones_like(completion_ids)], dim=1)
    scored = module.logprobs_and_values(
        Sequences(input_ids, attention_mask, completion_ids.shape[1])
    )
    seconds["logprobs"], start = time.perf_counter() - start, time.perf_counter()

    # 4. Shaping: the outcome on the last token, the KL to the reference folded in if asked.
    kl = None
    if spec.kl_coef > 0:
        if scored.old_logprobs is None or scored.ref_logprobs is None:
            raise ValueError(
                "KL in the reward needs old and reference logprobs from logprobs_and_values"
            )
        kl = kl_penalty(scored.old_logprobs, scored.ref_logprobs, spec.kl_estimator)
    token_rewards = token_level_rewards(rewards, completion_mask, kl, spec.kl_coef)

    # 5. Advantages (and value targets) from the chosen estimator.
    if spec.estimator.needs_values and scored.values is None:
        raise ValueError(
            f"{type(spec.estimator).__name__} needs values, but the module has no critic"
        )
    advantages, returns = spec.estimator(
        AdvantageInputs(
            rewards=rewards,
            token_rewards=token_rewards,
            completion_mask=completion_mask,
            group_size=group_size,
            values=scored.values,
            step_rewards=step_rewards,
            step_ends=step_ends,
        )
    )
    seconds["advantages"] = time.perf_counter() - start
    experience = Experience(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        rewards=rewards,
        token_rewards=token_rewards,
        advantages=advantages,
        returns=returns,
        old_logprobs=scored.old_logprobs,
        sampler_logprobs=sampled.logprobs,
        ref_logprobs=scored.ref_logprobs,
        values=scored.values,
        kl=kl,
        step_rewards=step_rewards,
        step_ends=step_ends,
        reward_components=components,
        prompts=fields["prompt"],
        completions=sampled.transcripts or completions,
        # DAPO's overlong filtering: a truncated completion's tokens leave the loss.
        loss_excluded=~stopped if overlong.mask_truncated_completions else None,
        truncated=sampled.truncated,
        episode_stats=dict(sampled.stats),
        group_size=group_size,
        weights_version=sampled.weights_version,
        weights_fingerprint=sampled.weights_fingerprint,
    )
    return experience, seconds
