"""PolicyUpdate without a Trainer: on a toy policy with two parameters, the accumulated
gradient of every micro-batch is the whole minibatch's for each exact loss aggregation, the
statistics average as documented, pi_old comes back on-policy, and minibatches are shuffled by
the update's own seeded RNG, which travels in its state."""

import dataclasses

import pytest
import torch

from lit_rl.algorithms import aggregate, masked_mean
from lit_rl.experience import Experience
from lit_rl.update import (
    GuardedOptimizerStep,
    MicroBatchLoss,
    PolicyUpdate,
    UpdatePlan,
    process_shares,
)
from tests.conftest import build_tokenizer, make_rollout

T = 5


def _experience(rows: int = 6, seed: int = 1) -> Experience:
    prompts = ["ab", "abcd", "x", "hello", "yo", "zzz", "q", "rs"][:rows]
    experience = make_rollout(build_tokenizer(), prompts, completion_length=T, seed=seed)
    # Row identities ride in the rewards, so the rows a micro-batch holds can be read back.
    return dataclasses.replace(experience, rewards=torch.arange(rows, dtype=torch.float32))


class ToyPolicy:
    """log pi of token t = a * id_t / 100 + b; its loss: the aggregated -A x log pi."""

    def __init__(self, aggregation: str) -> None:
        self.theta = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
        self.aggregation = aggregation
        self.calls: list[tuple[list[int], float]] = []  # (rows, weight) of every micro-batch

    def logprobs(self, experience: Experience) -> torch.Tensor:
        x = experience.sequences.completion_ids.float() / 100
        return self.theta[0] * x + self.theta[1]

    def loss(self, experience: Experience) -> torch.Tensor:
        per_token = -experience.advantages * self.logprobs(experience)
        return aggregate(per_token, experience.loss_mask, self.aggregation, max_completion_length=T)

    def accumulate(self, micro: Experience, weight: float) -> MicroBatchLoss:
        loss = self.loss(micro)
        (loss * weight).backward()
        logprobs = self.logprobs(micro).detach()
        self.calls.append((micro.rewards.int().tolist(), weight))
        stats = {"loss": loss.detach(), "kl": masked_mean(logprobs, micro.loss_mask)}
        return MicroBatchLoss(stats, logprobs)


def _update(policy: ToyPolicy, plan: UpdatePlan, lr: float = 0.0):
    optimizer = torch.optim.SGD([policy.theta], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    update = PolicyUpdate(plan, GuardedOptimizerStep(max_grad_norm=0.0))
    return update, optimizer, scheduler


@pytest.mark.parametrize(
    "aggregation", ["sequence_mean", "token_mean", "constant_normalizer", "batch_token_mean"]
)
def test_micro_batches_accumulate_to_the_minibatch_gradient(aggregation):
    experience = _experience()
    policy = ToyPolicy(aggregation)
    update, optimizer, scheduler = _update(policy, UpdatePlan(1, 1, 3, aggregation))
    result = update(experience, policy.accumulate, optimizer, scheduler)
    assert [rows for rows, _ in policy.calls] == [[0, 1], [2, 3], [4, 5]]
    accumulated = policy.theta.grad.clone()  # lr 0: the step leaves the gradient in place
    full = policy.loss(experience)
    (expected,) = torch.autograd.grad(full, policy.theta)
    torch.testing.assert_close(accumulated, expected, rtol=1e-6, atol=0)
    # Losses average as the loss aggregates, every other statistic over counted tokens.
    logprobs = policy.logprobs(experience).detach()
    assert result.metrics["loss"] == pytest.approx(full.item(), rel=1e-6)
    assert result.metrics["kl"] == pytest.approx(masked_mean(logprobs, experience.loss_mask).item())
    assert result.metrics["grad_norm"] == pytest.approx(expected.norm().item(), rel=1e-6)
    assert result.optimizer_steps == 1 and scheduler.last_epoch == 1


def test_on_policy_the_first_forward_pass_is_pi_old_in_experience_order():
    experience = _experience()
    policy = ToyPolicy("sequence_mean")
    update, optimizer, scheduler = _update(policy, UpdatePlan(1, 1, 4, "sequence_mean"))
    result = update(experience, policy.accumulate, optimizer, scheduler)
    assert [len(rows) for rows, _ in policy.calls] == [2, 2, 1, 1]
    torch.testing.assert_close(result.old_logprobs, policy.logprobs(experience).detach())
    assert experience.old_logprobs is None  # nothing written back


def _replay_sgd(
    theta: torch.Tensor, experience: Experience, minibatches: list[list[int]], lr: float
) -> torch.Tensor:
    """theta after plain SGD steps, one per minibatch in order, on each minibatch's token
    mean of -A x log pi (ToyPolicy's log pi, its aggregation written out)."""
    theta = theta.clone()
    x = experience.sequences.completion_ids.float() / 100
    for rows in minibatches:
        weights = theta.clone().requires_grad_(True)
        mask = experience.loss_mask[rows]
        per_token = -experience.advantages[rows] * (weights[0] * x[rows] + weights[1])
        (grad,) = torch.autograd.grad(per_token[mask].sum() / mask.sum(), weights)
        theta = theta - lr * grad
    return theta


def test_several_steps_take_pi_old_from_the_rollout_and_shuffle_each_epoch():
    experience = dataclasses.replace(_experience(), old_logprobs=torch.zeros(6, T))
    policy = ToyPolicy("token_mean")
    plan = UpdatePlan(
        epochs=2, num_mini_batches=3, gradient_accumulation_steps=1, aggregation="token_mean"
    )
    update, optimizer, scheduler = _update(policy, plan, lr=0.1)
    before = policy.theta.detach().clone()
    result = update(experience, policy.accumulate, optimizer, scheduler)
    assert result.optimizer_steps == 6 and scheduler.last_epoch == 6
    assert result.old_logprobs is experience.old_logprobs
    # One accumulation step per minibatch: each call is a whole minibatch, in step order.
    assert [weight for _, weight in policy.calls] == [1.0] * 6
    replayed = _replay_sgd(before, experience, [rows for rows, _ in policy.calls], lr=0.1)
    assert not torch.equal(replayed, before)
    # float32 weights below 1; the replay sums the token mean in another order (1.5e-8 apart).
    torch.testing.assert_close(policy.theta.detach(), replayed, rtol=0, atol=1e-7)
    order = [row for rows, _ in policy.calls for row in rows]
    for epoch in (order[:6], order[6:]):
        assert sorted(epoch) == list(range(6))  # every row once per epoch
    assert order[:6] != list(range(6)) and order[:6] != order[6:]  # shuffled, afresh
    # The shuffle is the update's own seeded RNG: another update in the same state draws
    # the same orders, and its state carries on where it was.
    state = update.state_dict()
    again = ToyPolicy("token_mean")
    same, optimizer, scheduler = _update(again, plan)
    same(experience, again.accumulate, optimizer, scheduler)
    assert [r for rows, _ in again.calls for r in rows] == order
    later = ToyPolicy("token_mean")
    resumed, optimizer, scheduler = _update(later, plan)
    resumed.load_state_dict(state)
    resumed(experience, later.accumulate, optimizer, scheduler)
    policy.calls.clear()
    update(experience, policy.accumulate, optimizer, scheduler)
    assert [r for rows, _ in later.calls for r in rows] == [
        r for rows, _ in policy.calls for r in rows
    ]


def test_several_steps_without_pi_old_are_refused():
    policy = ToyPolicy("token_mean")
    update, optimizer, scheduler = _update(policy, UpdatePlan(2, 1, 1, "token_mean"))
    with pytest.raises(ValueError, match="2 optimizer steps on one Experience need pi_old"):
        update(_experience(), policy.accumulate, optimizer, scheduler)


@pytest.mark.parametrize("field", ["epochs", "num_mini_batches", "gradient_accumulation_steps"])
def test_an_update_plan_refuses_zero(field):
    settings = dict(
        epochs=1, num_mini_batches=1, gradient_accumulation_steps=1, aggregation="token_mean"
    )
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
        UpdatePlan(**{**settings, field: 0})


def test_one_process_holds_the_whole_minibatch():
    assert process_shares(torch.ones(3, 4, dtype=torch.bool), "token_mean") == (1.0, 1.0)
