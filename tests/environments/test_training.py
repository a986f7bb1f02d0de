"""GRPO and PPO trained on multi-turn episodes, on the tiny model through the CPU's default
engine (PackedEngine: real sampling): the mask covers exactly the sampled turns, the logged
completion length is its sum, the engine and trainer agree on the sampled tokens, and nothing
outside the mask (the environment's tokens, padding) reaches a loss or a statistic."""

from dataclasses import replace

import pytest
import torch

from lit_rl.environments import Episodes
from lit_rl.modules import GRPOModule, PPOModule
from lit_rl.rewards import EpisodeReward
from tests.conftest import Trained, built, fit_rollouts, tiny_module_args
from tests.environments.toy import Guess, TextLength


class Logged(Trained):
    """``Trained``, and the metrics logged at each step."""

    def __init__(self):
        super().__init__()
        self.metrics = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _module(cls, model_dir, **extra):
    episodes = Episodes(Guess, max_turns=3, max_episode_tokens=80, max_observation_tokens=30)
    args = tiny_module_args(model_dir, reward=EpisodeReward(), episodes=episodes, **extra)
    return cls(**args)


@pytest.fixture
def trained(tiny_model_dir):
    Guess.instances.clear()
    module = _module(GRPOModule, tiny_model_dir, beta=0.04)
    logged = Logged()
    fit_rollouts(module, tiny_model_dir, steps=1, callbacks=(logged,))
    return module, logged


def test_the_mask_is_the_sampled_turns_and_the_length_its_sum(trained):
    module, logged = trained
    experience = logged.batches[0].experience
    mask = experience.completion_mask
    completion_ids = experience.input_ids[:, -experience.num_completion_tokens :]
    assert len(Guess.instances) == len(experience)  # one environment per episode
    for row, environment in enumerate(Guess.instances):
        sampled = module.tokenizer.decode(completion_ids[row][mask[row]], skip_special_tokens=True)
        assert sampled == "".join(turn.text for turn in environment.turns)
    metrics = logged.metrics[0]
    assert metrics["rollout/completion_len"] == pytest.approx(mask.sum(1).float().mean().item())
    assert metrics["rollout/episode/turns"] > 1  # multi-turn, for some episodes at least
    assert metrics["rollout/episode/environment_tokens"] > 0
    assert metrics["rollout/logprob_mismatch_k3"] < 1e-6  # float32: engine = trainer
    assert experience.episode_stats["turns"].max() <= 3


def test_nothing_outside_the_mask_reaches_the_loss(trained):
    module, logged = trained
    experience = logged.batches[0].experience
    outside = ~experience.completion_mask
    # Advantages with a spread on the sampled tokens (a random tiny model's groups may all
    # miss: then every advantage is 0 and no gradient would show what reaches the loss).
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(experience.completion_mask.shape, generator=generator)
    experience = replace(experience, advantages=spread * experience.completion_mask)

    def garbage(tensor, value):
        return (
            None if tensor is None else torch.where(outside, torch.full_like(tensor, value), tensor)
        )

    spoiled = replace(
        experience,
        advantages=garbage(experience.advantages, 1e3),
        ref_logprobs=garbage(experience.ref_logprobs, -50.0),
        sampler_logprobs=garbage(experience.sampler_logprobs, -50.0),
    )
    clean, clean_grads = _stats_and_gradients(module, experience)
    dirty, dirty_grads = _stats_and_gradients(module, spoiled)
    assert clean.keys() == dirty.keys()
    for name, value in clean.items():
        assert torch.equal(value, dirty[name]), name
    # Not vacuous: the loss moves the adapters.
    assert any(g.abs().max() > 0 for g in clean_grads.values())
    for name, grad in clean_grads.items():
        assert torch.equal(grad, dirty_grads[name]), name


def _stats_and_gradients(module, experience):
    """The loss's statistics of one micro-batch and the gradients it leaves."""
    module.zero_grad(set_to_none=True)
    stats = module.accumulate_gradients(experience, 1.0).stats
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return stats, grads


def test_ppo_on_episodes_keeps_the_environments_tokens_out_of_its_losses(tiny_model_dir):
    Guess.instances.clear()
    module = _module(PPOModule, tiny_model_dir, kl_coef=0.05)
    logged = Logged()
    fit_rollouts(module, tiny_model_dir, steps=1, callbacks=(logged,))
    experience = logged.batches[0].experience
    outside = ~experience.completion_mask
    assert (experience.advantages[outside] == 0).all() and (experience.returns[outside] == 0).all()
    spoiled = replace(
        experience,
        values=torch.where(outside, 1e3, experience.values),
        ref_logprobs=torch.where(outside, -50.0, experience.ref_logprobs),
    )
    clean = module.accumulate_gradients(experience, 1.0).stats
    dirty = module.accumulate_gradients(spoiled, 1.0).stats
    for name, value in clean.items():
        assert torch.equal(value, dirty[name]), name


def test_each_turns_reward_credits_that_turn_and_the_ones_before(tiny_model_dir):
    # TurnRewards with process supervision (DeepSeekMath §4.1.3, a turn as a step): every turn
    # reward normalised by the mean and sample std of all turn rewards of its group, and a
    # token credited with the normalised rewards of its turn and the turns after it. Checked
    # against a loop over the episodes the run really sampled (PackedEngine).
    from lit_rl.experience import ProcessSupervised
    from lit_rl.rewards import TurnRewards

    TextLength.instances.clear()
    episodes = Episodes(TextLength, max_turns=3, max_episode_tokens=80, max_observation_tokens=30)
    args = tiny_module_args(
        tiny_model_dir,
        reward=TurnRewards(),
        episodes=episodes,
        advantage_estimator=ProcessSupervised(),
    )
    logged = Logged()
    fit_rollouts(GRPOModule(**args), tiny_model_dir, steps=1, callbacks=(logged,))
    e = logged.batches[0].experience
    group = 4
    for start in range(0, len(e), group):
        turns = []  # (row, the token where the turn ends, its reward) of the group's episodes
        for row in range(start, start + group):
            sampled = e.completion_mask[row].nonzero().flatten().tolist()
            # A turn ends where the next sampled token does not follow it, or at the last one.
            ends = [t for t, u in zip(sampled, [*sampled[1:], -1], strict=True) if u != t + 1]
            assert e.step_ends[row][e.step_ends[row] >= 0].tolist() == ends
            rewards = TextLength.instances[row].rewards
            assert len(rewards) == len(ends)
            turns += [(row, end, reward) for end, reward in zip(ends, rewards, strict=True)]
        rewards = torch.tensor([reward for _, _, reward in turns], dtype=torch.float64)
        normalized = ((rewards - rewards.mean()) / (rewards.std() + 1e-4)).tolist()
        for row in range(start, start + group):
            for t in range(e.completion_mask.shape[1]):
                credit = sum(
                    n
                    for (r, end, _), n in zip(turns, normalized, strict=True)
                    if r == row and end >= t
                )
                expected = credit if e.completion_mask[row, t] else 0.0
                assert e.advantages[row, t].item() == pytest.approx(expected, abs=1e-5), (row, t)
    assert e.advantages.abs().max() > 0.1  # the turns' rewards had a spread


def test_a_process_reward_is_refused_on_episodes(tiny_model_dir):
    from lit_rl.rewards import ArithmeticSteps

    module = built(_module(GRPOModule, tiny_model_dir))
    module.reward = ArithmeticSteps()
    with pytest.raises(ValueError, match="these rollouts are multi-turn episodes"):
        fit_rollouts(module, tiny_model_dir, steps=1)


def test_episode_reward_without_episodes_is_refused(tiny_model_dir):
    module = GRPOModule(**tiny_module_args(tiny_model_dir, reward=EpisodeReward()))
    with pytest.raises(KeyError, match="these rollouts are single completions"):
        fit_rollouts(module, tiny_model_dir, steps=1)


def test_a_recipe_names_the_environment_by_class_path(tiny_model_dir, tmp_path):
    from lit_rl.cli import LitRLCLI

    config = tmp_path / "episodes.yaml"
    config.write_text(
        f"""
model:
  class_path: lit_rl.modules.GRPOModule
  init_args:
    model: {tiny_model_dir}
    reward: {{class_path: lit_rl.rewards.EpisodeReward}}
    episodes:
      environment:
        class_path: lit_rl.environments.MathFeedback
        init_args: {{max_attempts: 2, discount: 0.25}}
      max_turns: 2
      tool_parser: {{class_path: lit_rl.environments.TagToolCalls}}
data:
  class_path: lit_rl.data.PromptDataModule
"""
    )
    cli = LitRLCLI(args=["--config", str(config)], run=False)
    episodes = cli.model.episodes
    environments = episodes.environment(), episodes.environment()
    assert environments[0] is not environments[1]  # one instance per call: per episode
    assert environments[0].max_attempts == 2 and environments[0].discount == 0.25
    assert episodes.max_turns == 2 and episodes.tool_parser("<calc>1</calc>").calls


def test_length_rules_read_the_episode_budget(tiny_model_dir):
    # Dr. GRPO's constant normaliser and DAPO's overlong punishment take the episode's budget
    # (80 tokens) as the length budget, and the sampled tokens as the length.
    from lit_rl.algorithms import overlong_penalty
    from lit_rl.experience import Overlong

    Guess.instances.clear()
    overlong = Overlong(buffer_length=70, penalty_factor=1.0)  # longer than 10 tokens: less
    module = _module(GRPOModule, tiny_model_dir, loss_type="dr_grpo", overlong=overlong)
    logged = Logged()
    fit_rollouts(module, tiny_model_dir, steps=1, callbacks=(logged,))
    experience = logged.batches[0].experience
    lengths = experience.completion_mask.sum(1)
    expected = overlong_penalty(lengths, 80, 70, 1.0)
    assert (expected < 0).any() and (lengths > 8).any()  # past one turn's budget (8)
    torch.testing.assert_close(experience.reward_components["overlong_penalty"], expected)
