"""PPOModule on the tiny model: one backbone for policy, reference and critic; the update touches
the policy adapter, the value adapter and the value head only; the critic learns."""

import copy
import json
import math

import pytest
import torch
from lightning.pytorch import Callback

from lit_rl.experience import ProcessSupervised, ReinforcePlusPlus
from lit_rl.models import VALUE_ADAPTER
from lit_rl.modules import PPOModule
from lit_rl.rewards import FunctionReward
from tests.conftest import built, fit_rollouts, tiny_module_args


class Capture(Callback):
    """Every batch's Experience, the module's weights before the first update, and the
    critic's explained variance after each update."""

    def __init__(self):
        self.experiences, self.weights, self.explained = [], None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.weights is None:
            self.weights = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.experiences.append(pl_module.handoff.trained.experience)
        if "train/vf_explained_var" in trainer.callback_metrics:
            self.explained.append(trainer.callback_metrics["train/vf_explained_var"].item())


class RecordingPPO(PPOModule):
    """Records every micro-batch: the optimizer step it is part of, its rows and its losses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def accumulate_gradients(self, micro, weight):
        output = super().accumulate_gradients(micro, weight)
        self.calls.append((self.trainer.global_step, micro, output))
        return output


def _module(tiny_model_dir, cls=PPOModule, **kwargs):
    return cls(
        **tiny_module_args(tiny_model_dir, **{"ppo_epochs": 2, "num_mini_batches": 2, **kwargs})
    )


def _shaped_rewards(e, kl_coef: float) -> torch.Tensor:  # [N, T] float64
    """Ziegler et al. (2019) Eq. 2 by hand: -kl_coef x k1 = -kl_coef (log pi_old - log pi_ref)
    on every counted token, plus the sequence reward on the last one (masks are prefixes)."""
    mask = e.completion_mask
    shaped = -kl_coef * (e.old_logprobs - e.ref_logprobs).double() * mask
    shaped[torch.arange(len(e)), mask.sum(1) - 1] += e.rewards.double()
    return shaped


def _naive_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:  # float64 ([N, T], [N, T])
    """Schulman et al. (2016) Eq. 16, row by row: delta_t = r_t + gamma V_{t+1} - V_t, V = 0
    after the last counted token, A_t = sum_l (gamma lam)^l delta_{t+l}; returns A + V."""
    advantages = torch.zeros(mask.shape, dtype=torch.float64)
    for i, length in enumerate(mask.sum(1).tolist()):
        r, v = rewards[i, :length].tolist(), [*values[i, :length].tolist(), 0.0]
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(length)]
        for t in range(length):
            advantages[i, t] = sum((gamma * lam) ** k * d for k, d in enumerate(deltas[t:]))
    return advantages, (advantages + values.double()) * mask


def _gae_at_zero_values(module, e):
    """The first batch's advantages and returns by hand: its values are exactly 0 (the value
    head starts at zero), so GAE sees only the shaped rewards."""
    zeros = torch.zeros(e.completion_mask.shape)
    assert torch.equal(e.values, zeros)
    estimator = module.advantage_estimator
    shaped = _shaped_rewards(e, module.kl_coef)
    return _naive_gae(shaped, zeros, e.completion_mask, estimator.gamma, estimator.lam)


def _whitened(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the counted entries, var the sample variance
    (divided by n - 1), as lit_rl's whiten defines it; 0 elsewhere."""
    counted = x[mask]
    n = counted.numel()
    mean = counted.sum() / n
    var = ((counted - mean) ** 2).sum() / (n - 1)
    return (x - mean) / (var + 1e-8).sqrt() * mask


def _fit(module, tiny_model_dir, steps=1, **data_args):
    capture = Capture()
    trainer = fit_rollouts(
        module, tiny_model_dir, steps, [capture], **{"num_train": 16, **data_args}
    )
    return trainer, capture


def test_experience_holds_values_kl_shaped_rewards_and_gae(tiny_model_dir):
    torch.manual_seed(0)
    module = _module(tiny_model_dir, kl_coef=0.1)
    _, capture = _fit(module, tiny_model_dir, steps=8)  # 2 epochs x 2 minibatches per batch
    e = capture.experiences[0]
    n, t = e.completion_mask.shape
    for field in ("old_logprobs", "ref_logprobs", "values", "returns", "kl"):
        assert getattr(e, field).shape == (n, t), field
    # Value head and value adapter start at zero: V = 0 and pi_old = pi_ref on the first batch.
    assert torch.equal(e.values, torch.zeros(n, t))
    torch.testing.assert_close(e.old_logprobs, e.ref_logprobs, rtol=0, atol=1e-6)
    # The second batch: shaping, GAE and whitening by hand from its stored parts.
    e = capture.experiences[1]
    mask = e.completion_mask
    kl = e.old_logprobs - e.ref_logprobs  # k1, the same float32 subtraction as the module's
    assert (kl * mask).abs().sum() > 0 and (e.values * mask).abs().sum() > 0
    assert torch.equal(e.kl, kl)
    shaped = _shaped_rewards(e, kl_coef=0.1)
    # float32 against float64: rewards, values and returns here are below 1 in size, and
    # GAE sums at most 8 of them, so a few ulps of 1 (1.2e-7).
    torch.testing.assert_close(e.token_rewards.double(), shaped, rtol=0, atol=1e-7)
    raw, returns = _naive_gae(shaped, e.values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(e.returns.double(), returns, rtol=0, atol=2e-7)
    # Whitening divides by the advantages' std (~0.1 here), which scales that error by ~10.
    torch.testing.assert_close(e.advantages.double(), _whitened(raw, mask), rtol=0, atol=3e-6)


def test_one_step_moves_both_adapters_and_the_head_but_not_the_base(tiny_model_dir):
    torch.manual_seed(0)
    # One training step = 2 epochs x 2 minibatches. The zero-initialised head passes no
    # gradient to the value adapter on the very first optimizer step; the later ones move it.
    module = _module(tiny_model_dir)
    _, capture = _fit(module, tiny_model_dir)
    before, after = capture.weights, module.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    policy_lora = {k for k in changed if ".lora_" in k and ".default." in k}
    value_lora = {k for k in changed if ".lora_" in k and f".{VALUE_ADAPTER}." in k}
    assert policy_lora and value_lora
    head = {"models.value_head.weight", "models.value_head.bias"}
    assert head <= changed
    assert changed == policy_lora | value_lora | head


def test_the_critic_learns_a_prompt_dependent_reward(tiny_model_dir, tmp_path):
    # Prompts "Say A" are worth 1, "Say B" 0, whatever the completion: the critic can explain
    # the returns only by reading the prompt. Starting from V = 0 (explained variance 0), it
    # must explain over half of the variance within 10 rollout batches.
    data = tmp_path / "ab.jsonl"
    rows = [{"question": f"Say {c}", "target": c} for c in "AB" * 8]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    torch.manual_seed(0)
    module = _module(
        tiny_model_dir,
        reward=FunctionReward(lambda p, c, b: [float(t == "A") for t in b["target"]], name="is_a"),
        kl_coef=0.0,
        learning_rate=1e-3,
        value_learning_rate=1e-2,
        vf_coef=1.0,
        cliprange_value=1.0,
        ppo_epochs=4,
        num_mini_batches=1,
    )
    _, capture = _fit(module, tiny_model_dir, 4 * 10, train_data=str(data), batch_size=8)
    explained = capture.explained
    assert len(explained) == 10 and abs(explained[0]) < 0.05, explained
    assert explained[-1] > 0.5, explained


def test_kl_coef_adapts_and_travels_with_the_checkpoint(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    settings = dict(kl_coef=0.1, kl_estimator="k3", kl_target=0.01, kl_horizon=100)
    module = _module(tiny_model_dir, **settings)
    trainer, capture = _fit(module, tiny_model_dir, steps=12)  # 3 rollout batches
    expected = 0.1  # Ziegler et al.: coef *= 1 + clip(KL / target - 1, +-0.2) * n / horizon
    for e in capture.experiences:
        sequence_kl = (e.kl * e.completion_mask).sum(1).mean().item()
        expected *= 1 + min(max(sequence_kl / 0.01 - 1, -0.2), 0.2) * len(e) / 100
    assert module.kl_controller.coef == pytest.approx(expected, rel=1e-6)
    assert module.kl_controller.coef != 0.1
    trainer.save_checkpoint(tmp_path / "ppo.ckpt")
    checkpoint = torch.load(tmp_path / "ppo.ckpt", weights_only=True)
    restored = built(_module(tiny_model_dir, **settings))
    restored.on_load_checkpoint(checkpoint)
    assert restored.kl_controller.coef == module.kl_controller.coef


def test_a_separate_value_model_trains_beside_full_finetuning(tiny_model_dir):
    """The separate critic's head starts at zero: the first rollout's values are 0, its returns
    are the GAE of the shaped rewards alone, and the first step's value loss is 1/2 mean R^2."""
    torch.manual_seed(0)
    module = built(
        _module(tiny_model_dir, RecordingPPO, lora=None, value_model=str(tiny_model_dir))
    )
    models = module.models
    assert models.value_head is None and models.value_model is not None
    head_before = models.value_model.head.weight.clone()
    _, capture = _fit(module, tiny_model_dir)
    e = capture.experiences[0]
    _, returns = _gae_at_zero_values(module, e)
    # float32 sums of at most 8 rewards below 1 in size: a few ulps of 1 (1.2e-7).
    torch.testing.assert_close(e.returns.double(), returns, rtol=0, atol=2e-7)
    first_step = [(micro, output) for step, micro, output in module.calls if step == 0]
    assert len(first_step) == 2  # a minibatch of 4 rows, in 2 micro-batches
    for micro, output in first_step:
        # V = V_old = 0, so clip(V, V_old +- 0.2) = V and both errors are R^2 (R: rows of the
        # returns checked above).
        m = micro.loss_mask
        expected = 0.5 * (micro.returns.double() ** 2 * m).sum().item() / m.sum().item()
        assert expected > 0
        # float32 squares and a mean of ~30 positive terms: ~1e-7 relative.
        assert output.stats["value_loss"].item() == pytest.approx(expected, rel=1e-6)
    assert not torch.equal(models.value_model.head.weight, head_before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lora=None), "value adapter on the policy's backbone, which needs LoRA"),
        (
            dict(advantage_estimator=ProcessSupervised(), kl_coef=0.1),
            "ProcessSupervised does not read: put the KL in the loss",
        ),
        (dict(kl_coef=0.0, kl_target=1.0), "start from kl_coef > 0"),
        (dict(vf_coef=0.0), "vf_coef must be > 0"),
        (dict(ppo_epochs=0), "ppo_epochs must be >= 1"),
    ],
)
def test_bad_ppo_configuration_is_named(tiny_model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module(tiny_model_dir, **kwargs)


def test_reinforce_plus_plus_is_ppo_without_a_critic(tiny_model_dir):
    """A critic-free estimator: no value adapter or head is built or trained, the loss is the
    clipped surrogate alone, the KL is in the reward and the advantages are whitened returns."""
    torch.manual_seed(0)
    module = _module(tiny_model_dir, advantage_estimator=ReinforcePlusPlus(), kl_coef=0.1)
    trainer, capture = _fit(module, tiny_model_dir, steps=4)
    assert module.model_recipe.critic is None and not module.models.has_critic
    assert not any(VALUE_ADAPTER in name for name, _ in module.named_parameters())
    metrics = trainer.callback_metrics
    assert "train/value_loss" not in metrics and "train/vf_explained_var" not in metrics
    assert metrics["train/loss"] == metrics["train/policy_loss"]
    e = capture.experiences[0]
    assert e.values is None and e.returns is None and e.kl is not None
    mask = e.completion_mask
    to_go = (e.token_rewards * mask).flip(1).cumsum(1).flip(1)
    # Whitened with whiten's eps of 1e-8 in the variance: it matters here, where every reward
    # of the random tiny model is 0 and the returns are only the small KL penalties.
    whitened = (to_go - to_go[mask].mean()) / (to_go[mask].var() + 1e-8).sqrt()
    torch.testing.assert_close(e.advantages, whitened * mask, atol=1e-5, rtol=1e-5)


def _naive_ppo_loss(
    logprobs: torch.Tensor, micro, epsilon: float, beta: float
) -> tuple[float, float, int]:
    """PPO's clipped surrogate (Schulman et al., 2017, Eq. 7) minus beta x the k2 KL to the
    reference, 1/2 (log pi - log pi_ref)^2, token by token in float64; returns the negated
    token mean, the k2 sum and the number of counted tokens."""
    lp, old, ref, adv = (
        x.double().tolist()
        for x in (logprobs, micro.old_logprobs, micro.ref_logprobs, micro.advantages)
    )
    objective, kl, count = 0.0, 0.0, 0
    for i, counted in enumerate(micro.loss_mask.tolist()):
        for t in (t for t, c in enumerate(counted) if c):
            ratio, a = math.exp(lp[i][t] - old[i][t]), adv[i][t]
            bounded = min(max(ratio, 1 - epsilon), 1 + epsilon)
            k2 = 0.5 * (lp[i][t] - ref[i][t]) ** 2
            objective += min(ratio * a, bounded * a) - beta * k2
            kl, count = kl + k2, count + 1
    return -objective / count, kl, count


def test_the_kl_in_the_loss_is_an_option_of_ppo(tiny_model_dir):
    """beta x the configured estimator (k2) in the loss, by hand on every micro-batch from the
    logprobs it trained on; once the policy has left the reference, that KL is > 0."""
    torch.manual_seed(0)
    # Log-ratios to pi_old reach a few 1e-2 by the last steps: epsilon 0.02 clips some tokens.
    settings = dict(kl_coef=0.0, beta=0.1, loss_kl_estimator="k2", epsilon=0.02)
    module = _module(tiny_model_dir, RecordingPPO, **settings)
    trainer, capture = _fit(module, tiny_model_dir, steps=4)
    assert module.model_recipe.reference and capture.experiences[0].kl is None
    assert len(module.calls) == 8  # 2 epochs x 2 minibatches x 2 micro-batches
    step_kl: dict[int, list[float]] = {}  # step -> [k2 sum, tokens] over its micro-batches
    for step, micro, output in module.calls:
        loss, kl_sum, count = _naive_ppo_loss(output.logprobs, micro, 0.02, 0.1)
        # float32 sums of ~16 surrogates of size ~1 (whitened A): a few ulps of 1 (1.2e-7);
        # beta x k2 is 5e-6 to 3e-4 after the first step, well above that.
        assert output.stats["policy_loss"].item() == pytest.approx(loss, abs=2e-7)
        # k2 of float32 logprobs: the differences are exact, squares and sums ~1e-7 relative.
        assert output.stats["kl"].item() == pytest.approx(kl_sum / count, rel=1e-6)
        if step > 0:  # the policy has moved: pi != pi_ref
            assert kl_sum > 0
        totals = step_kl.setdefault(step, [0.0, 0])
        totals[0], totals[1] = totals[0] + kl_sum, totals[1] + count
    assert any(output.stats["clip_ratio"] > 0 for *_, output in module.calls)
    # train/kl: each optimizer step's token mean over its minibatch, averaged over the steps.
    expected = sum(kl_sum / count for kl_sum, count in step_kl.values()) / len(step_kl)
    assert len(step_kl) == 4 and expected > 0
    assert trainer.callback_metrics["train/kl"].item() == pytest.approx(expected, rel=1e-6)


def test_a_checkpoint_of_another_algorithm_is_refused_by_name(tiny_model_dir, tmp_path):
    from lit_rl.modules import GRPOModule

    torch.manual_seed(0)
    grpo = GRPOModule(**tiny_module_args(tiny_model_dir))
    trainer = fit_rollouts(grpo, tiny_model_dir, steps=1)
    path = tmp_path / "grpo.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(
        KeyError, match="PPOModule cannot resume from this checkpoint: it has no kl_coef"
    ):
        # Critic-free, so the optimizer's parameters match GRPO's: only the KL state is missing.
        ppo = _module(tiny_model_dir, advantage_estimator=ReinforcePlusPlus())
        fit_rollouts(ppo, tiny_model_dir, steps=2, ckpt_path=path)


def test_classic_ppo_samples_one_completion_per_prompt(tiny_model_dir):
    """GAE's baseline is the critic, so G = 1 works (no group statistics are logged);
    estimators that compare a prompt's completions refuse it, naming the fix."""
    torch.manual_seed(0)
    module = _module(tiny_model_dir, num_generations=1)
    trainer, capture = _fit(module, tiny_model_dir, steps=4)
    assert trainer.global_step == 4 and len(capture.experiences[0]) == 2  # 2 prompts x 1
    assert "rollout/zero_std_fraction" not in trainer.callback_metrics
    assert "train/value_loss" in trainer.callback_metrics
    # The first batch: the value head starts at zero, so V = 0 and GAE sees only rewards.
    e = capture.experiences[0]
    mask = e.completion_mask
    raw, returns = _gae_at_zero_values(module, e)
    assert returns.abs().sum() > 0
    # float32 sums of at most 8 terms, returns of up to ~1.1 here: a few ulps of 1 (1.2e-7).
    torch.testing.assert_close(e.returns.double(), returns, rtol=0, atol=3e-7)
    # Whitened over the 2 rows' tokens together: the std is ~0.4, which scales that by ~2.5.
    torch.testing.assert_close(e.advantages.double(), _whitened(raw, mask), rtol=0, atol=1e-6)
    with pytest.raises(
        ValueError, match="num_generations must be >= 2 to form groups for ReinforcePlusPlus"
    ):
        _module(
            tiny_model_dir,
            num_generations=1,
            advantage_estimator=ReinforcePlusPlus(baseline="group_mean"),
        )
