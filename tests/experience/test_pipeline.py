"""The experience pipeline through GRPOModule on the tiny model: process rewards reach the loss
per token, gradient accumulation is exact, and bad configurations are named."""

import copy
import math

import pytest
import torch
from lightning.pytorch import Callback

from lit_rl.experience import GAE, Overlong, ProcessSupervised
from lit_rl.modules import GRPOModule, PPOModule
from lit_rl.rewards import RewardOutput
from tests.conftest import built, fit_rollouts, tiny_module_args


class ChunkParity:
    """A toy process reward: every 2 characters of a completion are a step, rewarded 1 when
    the step's first character has an odd code point. Ends are exclusive character offsets."""

    name = "chunk_parity"

    def __call__(self, prompts, completions, batch) -> RewardOutput:
        num_steps = max(1, max((len(c) + 1) // 2 for c in completions))
        rewards = torch.zeros(len(completions), num_steps)
        ends = torch.full((len(completions), num_steps), -1, dtype=torch.long)
        for i, text in enumerate(completions):
            for j, start in enumerate(range(0, len(text), 2)):
                rewards[i, j] = float(ord(text[start]) % 2)
                ends[i, j] = min(start + 2, len(text))
        total = rewards.sum(1)
        return RewardOutput(total, {self.name: total}, step_rewards=rewards, step_ends=ends)


class Capture(Callback):
    """The first Experience, the weights it was sampled with, and the first gradients."""

    def __init__(self):
        self.experience = self.weights = self.grads = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.weights is None:
            self.weights = copy.deepcopy(pl_module.policy.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.experience is None:
            self.experience = pl_module.handoff.trained.experience

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {
                n: p.grad.clone()
                for n, p in pl_module.policy.named_parameters()
                if p.grad is not None
            }


def _stopped(completion_ids, mask, eos_token_ids):
    """[N] bool: the completion's last counted token is an EOS."""
    last = completion_ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)
    return torch.isin(last, torch.tensor(eos_token_ids))


def _module(tiny_model_dir, **kwargs):
    return GRPOModule(**tiny_module_args(tiny_model_dir, **{"max_completion_length": 10, **kwargs}))


def _fit(module, tiny_model_dir, steps=1):
    capture = Capture()
    return fit_rollouts(module, tiny_model_dir, steps, [capture]), capture


def test_process_rewards_reach_the_loss_per_token(tiny_model_dir):
    torch.manual_seed(0)
    module = _module(tiny_model_dir, reward=ChunkParity(), advantage_estimator=ProcessSupervised())
    trainer, capture = _fit(module, tiny_model_dir)
    e = capture.experience
    n, t = e.completion_mask.shape
    assert e.step_rewards.shape[0] == n and e.step_ends.shape == e.step_rewards.shape
    # Each step end is the first token whose decoded prefix covers the step's last character.
    reward = ChunkParity()(e.prompts, e.completions, {})
    decode = lambda ids: module.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    completion_ids = e.input_ids[:, -t:]
    stopped = _stopped(completion_ids, e.completion_mask, module.sampler.eos_token_ids)
    assert torch.equal(e.truncated, ~stopped)
    for i in range(n):
        last_end = int(reward.step_ends[i].max())
        for j in range(e.step_ends.shape[1]):
            char_end, token_end = int(reward.step_ends[i, j]), int(e.step_ends[i, j])
            if char_end < 0:
                assert token_end == -1
                continue
            if stopped[i] and char_end == last_end:  # the last step ends at the EOS
                assert token_end == int(e.completion_mask[i].sum()) - 1
                continue
            assert len(decode(completion_ids[i, : token_end + 1].tolist())) >= char_end
            assert len(decode(completion_ids[i, :token_end].tolist())) < char_end
    expected = _naive_process_advantages(e.step_rewards, e.step_ends, e.completion_mask, 4)
    # float32 against float64: up to 5 normalised rewards of size ~1 summed, a few ulps of 4.
    torch.testing.assert_close(e.advantages.double(), expected, rtol=0, atol=1e-6)
    varies = [(a[m] != a[m][0]).any() for a, m in zip(e.advantages, e.completion_mask, strict=True)]
    assert any(varies), "process advantages should differ between tokens of a completion"
    # The first step is on-policy (ratio 1) from the reference (LoRA's B = 0: KL 0), so the loss
    # is -1/G sum_i 1/|o_i| sum_t A_it (DeepSeekMath Eq. 3), with the per-token advantages.
    loss = -_row_means(expected, e.completion_mask).mean().item()
    assert abs(loss) > 1e-3  # per-token sums do not cancel over a group as outcome ones do
    # float32 means of 8 rows of ~10 advantages of size ~1: a few ulps of 1 (1.2e-7).
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(loss, abs=3e-7)


def _naive_process_advantages(
    step_rewards: torch.Tensor, step_ends: torch.Tensor, mask: torch.Tensor, group_size: int
) -> torch.Tensor:  # [N, T] float64
    """DeepSeekMath 4.1.3, group by group: every real step reward (end >= 0) of the group
    normalised by their mean and sample std (n - 1), (r - mean) / (std + 1e-4); token t of
    completion i gets the sum of its steps' normalised rewards that end at or after t."""
    advantages = torch.zeros(mask.shape, dtype=torch.float64)
    for first in range(0, len(step_rewards), group_size):
        rows = range(first, first + group_size)
        steps = [(i, j) for i in rows for j in range(step_ends.shape[1]) if step_ends[i, j] >= 0]
        values = [float(step_rewards[i, j]) for i, j in steps]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for (i, j), value in zip(steps, values, strict=True):
            end = int(step_ends[i, j])
            advantages[i, : end + 1] += (value - mean) / (std + 1e-4)
    return advantages * mask


def _row_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [N]
    """Each row's mean over its counted tokens; 0 for a row with none."""
    counts = mask.sum(1)
    return (values * mask).sum(1) / counts.clamp(min=1)


class RecordingGRPO(GRPOModule):
    """Records every micro-batch's token count, rows and loss weight, by optimizer step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[tuple[int, int, int, float]] = []

    def accumulate_gradients(self, micro, weight):
        tokens, rows = int(micro.completion_mask.sum()), len(micro)
        self.records.append((self.trainer.global_step, tokens, rows, weight))
        return super().accumulate_gradients(micro, weight)


def _ppo(tiny_model_dir, **kwargs):
    settings = {"max_completion_length": 10, "learning_rate": 1e-5, "ppo_epochs": 1, **kwargs}
    return PPOModule(**tiny_module_args(tiny_model_dir, **settings))


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "dr_grpo", "ppo"])
def test_gradient_accumulation_gives_the_full_batch_gradient(tiny_model_dir, algorithm):
    grads = []
    for accumulation in (1, 3):  # 8 rollouts in micro-batches of 3, 3, 2
        torch.manual_seed(0)
        if algorithm == "ppo":  # policy and value losses, both token means
            module = _ppo(tiny_model_dir, gradient_accumulation_steps=accumulation)
        else:
            module = _module(
                tiny_model_dir, loss_type=algorithm, gradient_accumulation_steps=accumulation
            )
        _, capture = _fit(module, tiny_model_dir)
        grads.append(capture.grads)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_minibatches_take_one_optimizer_step_each_and_need_old_logprobs(tiny_model_dir):
    torch.manual_seed(0)
    module = _module(tiny_model_dir, num_mini_batches=2, num_iterations=2)
    assert module.needs_old_logprobs
    # max_steps 1 ends the run after the first batch: its one rollout took 2 x 2 steps.
    trainer, capture = _fit(module, tiny_model_dir, steps=1)
    assert trainer.global_step == 4
    # pi_old is the policy the rollout was sampled with, computed again from those weights.
    fresh = built(_module(tiny_model_dir))
    fresh.policy.load_state_dict(capture.weights)
    with torch.no_grad():
        expected, _ = fresh.policy_logprobs(capture.experience.sequences)
    # The same float32 forward on the same rows (equal to the bit here); 1e-6 leaves room for
    # another kernel's summation order.
    torch.testing.assert_close(capture.experience.old_logprobs, expected, rtol=0, atol=1e-6)


def test_num_mini_batches_that_do_not_divide_the_rollouts_cut_them_unevenly(tiny_model_dir):
    torch.manual_seed(0)
    module = RecordingGRPO(  # 2 prompts x 4 = 8 rollouts in minibatches of 3, 3 and 2
        **tiny_module_args(tiny_model_dir, max_completion_length=10),
        num_mini_batches=3,
        gradient_accumulation_steps=1,
    )
    trainer, _ = _fit(module, tiny_model_dir)
    assert trainer.global_step == 3
    assert [rows for _, _, rows, _ in module.records] == [3, 3, 2]


def test_an_estimator_that_needs_values_is_refused_by_grpo(tiny_model_dir):
    with pytest.raises(ValueError, match="GAE needs a value model.*PPOModule"):
        _module(tiny_model_dir, advantage_estimator=GAE())


def test_a_process_estimator_without_step_rewards_names_the_fix(tiny_model_dir):
    module = _module(tiny_model_dir, advantage_estimator=ProcessSupervised())
    with pytest.raises(ValueError, match="ProcessSupervised needs step rewards"):
        _fit(module, tiny_model_dir)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_each_loss_type_weighs_micro_batches_over_its_batch(tiny_model_dir, loss_type):
    """dapo: every token of the Experience weighs the same in every optimizer step (weight =
    tokens x M / tokens of the Experience); grpo, dr_grpo, bnpo: micro-batches by rows."""
    torch.manual_seed(0)
    args = tiny_module_args(tiny_model_dir, max_completion_length=10, loss_type=loss_type, beta=0.0)
    module = RecordingGRPO(**args, num_mini_batches=2, gradient_accumulation_steps=2)
    trainer, capture = _fit(module, tiny_model_dir)
    experience_tokens = int(capture.experience.completion_mask.sum())
    steps = sorted({step for step, *_ in module.records})
    assert len(steps) == 2 and len(module.records) == 4  # 2 minibatches x 2 micro-batches
    for step, tokens, rows, weight in module.records:
        minibatch_rows = sum(r for s, _, r, _ in module.records if s == step)
        expected = tokens * 2 / experience_tokens if loss_type == "dapo" else rows / minibatch_rows
        assert weight == pytest.approx(expected, rel=1e-12), (step, tokens, rows)


def test_overlong_penalty_and_truncated_completions_leave_the_loss(tiny_model_dir):
    # Seed 1 draws completions of 4 and 9 tokens that stop at an EOS beside 6 truncated at the
    # budget: the penalty's three regimes, and a loss mask that keeps some rows, not none.
    torch.manual_seed(1)
    module = _module(
        tiny_model_dir,
        overlong=Overlong(buffer_length=4, penalty_factor=0.5, mask_truncated_completions=True),
        num_generations=4,
    )
    trainer, capture = _fit(module, tiny_model_dir)
    e = capture.experience
    lengths = e.completion_mask.sum(1).float()
    # DAPO Eq. 13 by hand: budget 10, free up to 6 tokens, -0.5 at 10.
    penalty = 0.5 * ((6 - lengths) / 4).clamp(min=-1.0, max=0.0)
    torch.testing.assert_close(e.reward_components["overlong_penalty"], penalty)
    components = e.reward_components
    outcome = components["contains_target"] + components["brevity"]  # the reward's total
    torch.testing.assert_close(e.rewards, outcome + penalty)
    t = e.completion_mask.shape[1]
    stopped = _stopped(e.input_ids[:, -t:], e.completion_mask, module.sampler.eos_token_ids)
    assert torch.equal(e.loss_excluded, ~stopped) and (~stopped).any() and stopped.any()
    assert not e.loss_mask[~stopped].any()
    # Group-normalised advantages by hand, over all 4 rows of a group, the truncated ones too.
    groups = e.rewards.double().view(-1, 4)
    mean = groups.sum(1, keepdim=True) / 4
    std = (((groups - mean) ** 2).sum(1, keepdim=True) / 3).sqrt()
    advantages = ((groups - mean) / (std + 1e-4)).reshape(-1, 1) * e.completion_mask
    # float32 against float64 on advantages below 2 in size: a few ulps of 1 (1.2e-7).
    torch.testing.assert_close(e.advantages.double(), advantages, rtol=0, atol=3e-7)
    # The first step: ratio 1, KL 0 (pi = pi_ref), so the loss is -1/N sum_i mean_t A_i over the
    # tokens of the loss mask; an excluded row has no tokens and adds 0, but still counts in N
    # (grpo's sequence mean is over the micro-batch's rows). Without the truncated rows, the
    # group's advantages no longer sum to 0.
    loss = -_row_means(advantages, e.loss_mask).sum().item() / len(e)
    assert abs(loss) > 1e-3
    # float32 means of 8 rows of advantages of size ~1: a few ulps of 1 (1.2e-7).
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(loss, abs=3e-7)
