"""The ``rollout/*`` metrics of one Experience."""

import torch

from lit_rl.algorithms import global_mean, global_std
from lit_rl.experience import Experience, ExperienceSpec


def rollout_metrics(
    experience: Experience, spec: ExperienceSpec, seconds: dict[str, float]
) -> dict[str, torch.Tensor]:
    """The ``rollout/*`` metrics of one Experience (docs/algorithms/grpo.md, ppo.md):
    ``reward`` is the rewards' mean (the reward's total, with DAPO's overlong penalty when
    on), ``return`` each completion's return (its reward minus the KL in the reward, when the
    algorithm folds one in) averaged; ``completion_len`` counts the sampled tokens (an
    episode's environment tokens are ``episode/environment_tokens``)."""
    rewards, mask, truncated = experience.rewards, experience.completion_mask, experience.truncated
    if truncated is None:
        raise ValueError("rollout_metrics needs the Experience's truncated flags (make_experience)")
    metrics = {
        "rollout/reward": rewards.mean(),
        "rollout/return": experience.token_rewards.sum(dim=1).mean(),
        "rollout/completion_len": mask.sum(1).float().mean(),
        "rollout/truncated_fraction": truncated.float().mean(),
        "rollout/advantage_std": global_std(experience.advantages[mask]),
        **{f"rollout/reward/{k}": v.mean() for k, v in experience.reward_components.items()},
        **{f"rollout/episode/{k}": v.mean() for k, v in experience.episode_stats.items()},
        **{f"rollout/{phase}_time": torch.tensor(s) for phase, s in seconds.items()},
        "rollout/weights_version": torch.tensor(experience.weights_version),
        "rollout/weights_fingerprint": torch.tensor(experience.weights_fingerprint),
    }
    if spec.num_generations > 1:  # within-group statistics (G = 1 has no groups)
        group_std = rewards.view(-1, spec.num_generations).std(dim=1)
        metrics["rollout/reward_std"] = group_std.mean()
        metrics["rollout/zero_std_fraction"] = (group_std == 0).float().mean()
    if experience.kl is not None:
        metrics["rollout/kl"] = (experience.kl * mask).sum(dim=1).mean()
        metrics["rollout/kl_coef"] = torch.tensor(spec.kl_coef)
    if experience.values is not None:
        metrics["rollout/values"] = global_mean(experience.values[mask])
    return {name: value.float() for name, value in metrics.items()}
