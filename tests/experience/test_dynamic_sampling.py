"""DAPO's dynamic sampling: joining Experiences, which groups are kept, the cap, the buffer's
state; and through the Trainer: every optimizer step trains on a full batch of groups with
signal, and a run stopped with a half-full buffer resumes with it."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger

from lit_rl.callbacks import RolloutCallback
from lit_rl.data import PromptDataModule
from lit_rl.experience import DynamicSampling, Experience, concatenate
from lit_rl.models.policy_models import completion_logprobs
from lit_rl.modules import GRPOModule
from lit_rl.rewards import RewardOutput
from tests.conftest import (
    build_tiny_model,
    build_tokenizer,
    fit_rollouts,
    rollout_trainer,
    tiny_module_args,
)

PAD = 0


def _experience(rewards: list[float], prompt_len: int, completion_len: int, seed: int):
    """A hand-built Experience, prompt-major in groups of 2, with distinct token ids."""
    n = len(rewards)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, completion_len + 1, (n,), generator=g)
    mask = torch.arange(completion_len)[None, :] < lengths[:, None]
    prompt = torch.randint(5, 90, (n, prompt_len), generator=g)
    prompt[:, 0] = PAD  # one left-padding column
    prompt_mask = (prompt != PAD).long()
    completion = torch.randint(5, 90, (n, completion_len), generator=g).masked_fill(~mask, PAD)
    return Experience(
        input_ids=torch.cat([prompt, completion], 1),
        attention_mask=torch.cat([prompt_mask, torch.ones_like(completion)], 1),
        completion_mask=mask,
        rewards=torch.tensor(rewards),
        token_rewards=torch.randn(n, completion_len, generator=g) * mask,
        advantages=torch.randn(n, completion_len, generator=g) * mask,
        sampler_logprobs=-torch.rand(n, completion_len, generator=g) * mask,
        step_rewards=torch.ones(n, 1 + seed),
        step_ends=torch.zeros(n, 1 + seed, dtype=torch.long),
        reward_components={"correctness": torch.tensor(rewards)},
        prompts=[f"p{seed}-{i}" for i in range(n)],
        completions=[f"c{seed}-{i}" for i in range(n)],
        group_size=2,
        weights_version=3,
    )


def test_concatenate_repads_prompts_left_and_completions_right():
    a = _experience([1.0, 0.0], prompt_len=4, completion_len=3, seed=0)
    b = _experience([0.0, 1.0, 1.0, 1.0], prompt_len=6, completion_len=5, seed=1)
    joined = concatenate([a, b], PAD)
    assert joined.input_ids.shape == (6, 6 + 5) and joined.num_completion_tokens == 5
    assert joined.group_size == 2 and joined.num_groups == 3 and joined.weights_version == 3
    # a's rows: 2 pad columns before the prompt, 2 after the completion.
    assert torch.equal(joined.input_ids[:2, 2:6], a.input_ids[:, :4])
    assert torch.equal(joined.input_ids[:2, 6:9], a.input_ids[:, 4:])
    assert (joined.input_ids[:2, :2] == PAD).all() and (joined.input_ids[:2, 9:] == PAD).all()
    assert (joined.attention_mask[:2, :2] == 0).all()
    assert torch.equal(joined.completion_mask[:2, :3], a.completion_mask)
    assert not joined.completion_mask[:2, 3:].any()
    assert torch.equal(joined.advantages[2:], b.advantages)
    assert joined.step_ends.shape == (6, 2) and (joined.step_ends[:2, 1] == -1).all()
    assert joined.prompts == a.prompts + b.prompts
    assert torch.equal(joined.reward_components["correctness"], torch.cat([a.rewards, b.rewards]))


def test_concatenate_fills_a_statistic_a_part_lacks_with_zeros():
    # Episode metrics are sums over an episode's steps: a draw where no episode reported one
    # (no tool call, say) has 0 of it.
    a = _experience([1.0, 0.0], prompt_len=4, completion_len=3, seed=0)
    b = _experience([0.0, 1.0], prompt_len=4, completion_len=3, seed=1)
    a.episode_stats = {"turns": torch.tensor([1.0, 2.0])}
    b.episode_stats = {"turns": torch.tensor([3.0, 1.0]), "tool_calls": torch.tensor([2.0, 0.0])}
    joined = concatenate([a, b], PAD).episode_stats
    assert joined["turns"].tolist() == [1.0, 2.0, 3.0, 1.0]
    assert joined["tool_calls"].tolist() == [0.0, 0.0, 2.0, 0.0]


def test_concatenated_rows_score_as_they_did_alone():
    """Re-padding moves tokens, not positions: a model scores every counted token the same."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id).eval()
    a = _experience([1.0, 0.0], prompt_len=4, completion_len=3, seed=0)
    b = _experience([0.0, 1.0], prompt_len=7, completion_len=6, seed=1)
    joined = concatenate([a, b], PAD)
    with torch.no_grad():
        parts = [completion_logprobs(model, e.sequences, 1.0, 8)[0] for e in (a, b)]
        whole = completion_logprobs(model, joined.sequences, 1.0, 8)[0]
    for rows, part, e in ((slice(0, 2), parts[0], a), (slice(2, 4), parts[1], b)):
        t = e.num_completion_tokens
        mask = e.completion_mask
        torch.testing.assert_close(whole[rows, :t][mask], part[mask], rtol=0, atol=1e-5)


def test_concatenate_refuses_different_weights():
    a = _experience([1.0, 0.0], 4, 3, seed=0)
    b = _experience([1.0, 0.0], 4, 3, seed=1)
    b.weights_version = 4
    with pytest.raises(ValueError, match="different weights"):
        concatenate([a, b], PAD)


def test_groups_with_equal_rewards_are_dropped_until_the_batch_is_full():
    sampling = DynamicSampling(max_draws=4)
    # Batch of 2 groups: [1, 0] has signal, [1, 1] has none.
    sampling.offer(_experience([1.0, 0.0, 1.0, 1.0], 4, 3, seed=0))
    assert (sampling.drawn_groups, sampling.dropped_groups, sampling.kept_groups) == (2, 1, 1)
    last = _experience([0.0, 0.0, 0.5, 1.0], 5, 4, seed=1)
    sampling.offer(last)
    assert sampling.kept_groups == 2 and sampling.drawn_groups == 4 and sampling.dropped_groups == 2
    experience, filled = sampling.take(last, target=2, pad_token_id=PAD)
    assert filled == 0 and experience.rewards.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert sampling.kept == [] and sampling.draws == 0  # emptied for the next batch


def test_at_the_cap_the_batch_is_completed_with_dropped_groups():
    sampling = DynamicSampling(max_draws=2)
    sampling.offer(_experience([1.0, 1.0, 0.0, 0.0], 4, 3, seed=0))
    last = _experience([0.0, 1.0, 1.0, 1.0], 4, 3, seed=1)
    sampling.offer(last)
    assert sampling.at_cap
    experience, filled = sampling.take(last, target=2, pad_token_id=PAD)
    assert filled == 1 and len(experience) == 4
    assert experience.rewards.tolist() == [0.0, 1.0, 1.0, 1.0]  # kept, then the dropped one
    # Beyond the target, extra groups are discarded.
    sampling.offer(_experience([1.0, 0.0, 0.0, 1.0, 0.5, 0.0], 4, 3, seed=2))
    experience, filled = sampling.take(last, target=2, pad_token_id=PAD)
    assert filled == 0 and experience.num_groups == 2


def test_the_buffer_round_trips_through_its_state_and_torch_save(tmp_path):
    sampling = DynamicSampling()
    sampling.offer(_experience([1.0, 0.0, 1.0, 1.0], 4, 3, seed=0))
    path = tmp_path / "state.pt"
    torch.save(sampling.state_dict(), path)
    restored = DynamicSampling()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.draws == 1 and restored.kept_groups == 1
    kept, original = restored.kept[0], sampling.kept[0]
    assert torch.equal(kept.input_ids, original.input_ids) and kept.prompts == original.prompts
    assert kept.group_size == 2 and kept.weights_version == 3


class HalfFlat:
    """Half the groups carry no signal: the prompts of half the templates (the embedded set
    cycles through them) reward every completion 1.0; the others reward each completion by a
    hash of its text, which four samples rarely share."""

    name = "half_flat"
    FLAT = {"add", "multiply", "two_step"}

    def __call__(self, prompts, completions, batch) -> RewardOutput:
        values = torch.tensor(
            [
                1.0 if template in self.FLAT else float(sum(map(ord, c)) % 7)
                for template, c in zip(batch["template"], completions, strict=True)
            ]
        )
        return RewardOutput(values, {self.name: values})


class Steps(Callback):
    """Every Experience the module trained on, the batches without one, and for each step the
    batches (prompt draws) that went into it and the rollout metrics it logged."""

    def __init__(self):
        self.trained, self.skipped = [], 0
        self.batches_per_step: list[int] = []
        self.rollout_metrics: list[dict[str, float]] = []
        self._batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._batches += 1
        if pl_module.handoff.trained is None:
            self.skipped += 1
            return
        self.trained.append(pl_module.handoff.trained.experience)
        self.batches_per_step.append(self._batches)
        self._batches = 0
        metrics = trainer.callback_metrics.items()
        self.rollout_metrics.append({k: float(v) for k, v in metrics if k.startswith("rollout/")})


def _module(tiny_model_dir):
    return GRPOModule(**tiny_module_args(tiny_model_dir, reward=HalfFlat(), beta=0.0))


def test_every_step_trains_on_a_full_batch_of_groups_with_signal(tiny_model_dir):
    torch.manual_seed(0)
    steps = Steps()
    module = _module(tiny_model_dir)
    trainer = fit_rollouts(
        module,
        tiny_model_dir,
        steps=4,
        callbacks=[steps],
        rollout=RolloutCallback(dynamic_sampling=DynamicSampling(max_draws=8)),
        num_train=64,
    )
    assert trainer.global_step == 4 and len(steps.trained) == 4
    assert steps.skipped > 0  # some draws left the batch short
    for experience in steps.trained:
        assert experience.num_groups == 2 and len(experience) == 8
        group_std = experience.rewards.view(2, 4).std(dim=1)
        assert (group_std > 0).all()
    metrics = trainer.callback_metrics
    assert metrics["rollout/zero_std_fraction"] == 0 and metrics["rollout/groups_filled"] == 0
    # Each step logs its own draws, counted here: the batches since the last step (skipped > 0,
    # so some step drew more than one), each of batch_size = 2 prompts.
    assert [m["rollout/draws"] for m in steps.rollout_metrics] == steps.batches_per_step
    drawn = [m["rollout/prompts_drawn"] for m in steps.rollout_metrics]
    assert drawn == [2 * batches for batches in steps.batches_per_step]


class Recorded(Logger):
    """Every ``log_metrics`` call a trainer makes."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recorded"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


def test_batches_without_a_step_log_nothing(tiny_model_dir):
    # Lightning logs every batch's on-step values; a batch without an optimizer step would
    # repeat the last step's (its result collection keeps them until the epoch ends).
    torch.manual_seed(0)
    steps, logger = Steps(), Recorded()
    module = _module(tiny_model_dir)
    rollout = RolloutCallback(dynamic_sampling=DynamicSampling(max_draws=8))
    trainer = rollout_trainer(4, (steps,), rollout=rollout)
    trainer.loggers = [logger]
    trainer.log_every_n_steps = 1  # every step (batch)
    trainer.fit(
        module,
        PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=64, num_val=2),
    )
    assert steps.skipped > 0
    losses = [metrics["train/loss"] for _, metrics in logger.rows if "train/loss" in metrics]
    assert len(losses) == len(steps.trained) == 4  # once per step, not once per batch
    assert trainer.log_every_n_steps == 1  # the user's setting is back


def test_a_run_stopped_with_a_half_full_buffer_resumes_with_it(tiny_model_dir, tmp_path):
    class StopWhenHalfFull(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sampling = rollout.dynamic_sampling
            if sampling.kept_groups == 1 and pl_module.handoff.trained is None:
                trainer.should_stop = True

    torch.manual_seed(0)
    rollout = RolloutCallback(dynamic_sampling=DynamicSampling(max_draws=8))
    trainer = fit_rollouts(
        _module(tiny_model_dir),
        tiny_model_dir,
        steps=50,
        callbacks=[StopWhenHalfFull()],
        rollout=rollout,
        num_train=64,
    )
    kept = rollout.dynamic_sampling.kept[0]
    assert rollout.dynamic_sampling.kept_groups == 1
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)

    class FirstExperience(Callback):
        def __init__(self):
            self.experience = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.experience is None and pl_module.handoff.trained is not None:
                self.experience = pl_module.handoff.trained.experience

    resumed = RolloutCallback(dynamic_sampling=DynamicSampling(max_draws=8))
    first = FirstExperience()
    fit_rollouts(
        _module(tiny_model_dir),
        tiny_model_dir,
        steps=trainer.global_step + 1,
        callbacks=[first],
        rollout=resumed,
        num_train=64,
        ckpt_path=path,
    )
    # The first Experience after the resume starts with the group kept before the stop.
    assert first.experience.prompts[:4] == kept.prompts
    t = kept.num_completion_tokens
    assert torch.equal(first.experience.completion_mask[:4, :t], kept.completion_mask)
