import copy
import math

import pytest
import torch
from lightning.pytorch import Callback
from peft import LoraConfig
from transformers import LlamaForCausalLM

from lit_rl.algorithms import grpo_loss
from lit_rl.data import PromptDataModule
from lit_rl.experience import LeaveOneOut, ProcessSupervised
from lit_rl.modules import GRPOModule
from lit_rl.rollout import HFGenerateEngine, PackedEngine
from tests.conftest import (
    TINY_LORA,
    Trained,
    build_tokenizer,
    built,
    fit_rollouts,
    make_rollout,
    rollout_trainer,
    tiny_llama_config,
    tiny_module_args,
)


def _module(tiny_model_dir, **kwargs):
    return GRPOModule(**tiny_module_args(tiny_model_dir, **kwargs))


def _fit(module, tiny_model_dir, steps=1, extra_callbacks=(), engine=None):
    return fit_rollouts(module, tiny_model_dir, steps, extra_callbacks, engine)


# None: the default engine (PackedEngine on a CPU); generate stays covered inside the loop.
ENGINES = pytest.mark.parametrize("engine", [None, HFGenerateEngine()], ids=["default", "generate"])


@ENGINES
def test_rollout_batch_contents(tiny_model_dir, engine):
    torch.manual_seed(0)
    trained = Trained()
    trainer = _fit(
        _module(tiny_model_dir), tiny_model_dir, extra_callbacks=[trained], engine=engine
    )
    r, update = trained.batches[0].experience, trained.batches[0].update
    n, t = r.completion_mask.shape
    assert n == 2 * 4 and 1 <= t <= 8
    assert r.input_ids.shape[0] == n and r.input_ids.shape == r.attention_mask.shape
    # completion_mask is a prefix per row (right padding)
    assert torch.equal(r.completion_mask, r.completion_mask.cummin(dim=1).values)
    # DeepSeekMath 4.1.2 by hand: (r - mean) / (std + 1e-4) per group of 4, the sample std.
    groups = r.rewards.view(2, 4)
    mean = groups.sum(1, keepdim=True) / 4
    std = ((groups - mean) ** 2).sum(1, keepdim=True).div(3).sqrt()
    expected = ((groups - mean) / (std + 1e-4)).reshape(-1, 1) * r.completion_mask
    torch.testing.assert_close(r.advantages, expected, rtol=0, atol=1e-6)
    assert r.rewards.unique().numel() > 1  # not vacuous: some group has signal
    # mu = 1: on-policy, so the update's own first forward pass gave pi_old (no extra pass
    # at rollout time); the engine's logprobs of its samples are the same numbers.
    mask = r.completion_mask
    assert r.old_logprobs is None and update.old_logprobs.shape == (n, t)
    torch.testing.assert_close(
        r.sampler_logprobs[mask], update.old_logprobs[mask], rtol=0, atol=1e-5
    )
    # LoRA starts with B = 0: the adapters add exactly 0, so at step 0 the policy is the
    # reference (adapters off) to the last bit, and the KL of the first step is 0.
    assert torch.equal(r.ref_logprobs[mask], update.old_logprobs[mask])
    assert trainer.callback_metrics["train/kl"].item() == 0.0
    assert len(r.completions) == n and r.prompts[0] == r.prompts[3] != r.prompts[4]
    assert set(r.reward_components) == {"contains_target", "brevity"}


class RecordingGRPO(GRPOModule):
    """Records, for every micro-batch, the policy's weights, the micro-batch and its loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def accumulate_gradients(self, micro, weight):
        weights = copy.deepcopy(self.policy.state_dict())
        output = super().accumulate_gradients(micro, weight)
        self.calls.append((weights, micro, output))
        return output


def _naive_grpo_loss(logprobs, old, ref, advantages, mask, eps: float, beta: float) -> float:
    """DeepSeekMath Eq. 3, negated, one token at a time in float64: r = exp(lp - old),
    objective = min(r A, clip(r, 1 - eps, 1 + eps) A) - beta k3 with the Eq. 4 estimator
    k3 = exp(ref - lp) - (ref - lp) - 1; a mean over each completion's counted tokens, then
    over completions."""
    lp, old, ref, adv = (x.double().tolist() for x in (logprobs, old, ref, advantages))
    rows = []
    for i, counted in enumerate(mask.tolist()):
        terms = []
        for t in (t for t, c in enumerate(counted) if c):
            ratio, a, d = math.exp(lp[i][t] - old[i][t]), adv[i][t], ref[i][t] - lp[i][t]
            bounded = min(max(ratio, 1 - eps), 1 + eps)
            terms.append(min(ratio * a, bounded * a) - beta * (math.exp(d) - d - 1))
        rows.append(sum(terms) / len(terms))
    return -sum(rows) / len(rows)


def _naive_k3_mean(logprobs, ref, mask) -> float:
    """The Eq. 4 KL estimate exp(ref - lp) - (ref - lp) - 1, averaged over counted tokens."""
    d = (ref - logprobs).double()[mask]
    return (d.exp() - d - 1).mean().item()


@ENGINES
def test_training_step_is_grpo_loss_and_updates_only_adapters(tiny_model_dir, engine):
    """mu = 2 on one Experience: at the second optimizer step the policy has moved, so the ratio
    is not 1 and the KL not 0 (at the first both vanish and the group-normalised advantages sum
    to 0, a loss of ~0 that any formula matches), and the loss is Eq. 3 by hand."""
    torch.manual_seed(0)
    trained = Trained()
    # The second step's log-ratios reach ~0.02: epsilon 0.01 clips some tokens, not all.
    eps = 0.01
    args = tiny_module_args(
        tiny_model_dir, num_iterations=2, gradient_accumulation_steps=1, epsilon=eps
    )
    module = RecordingGRPO(**args)
    trainer = _fit(module, tiny_model_dir, steps=2, extra_callbacks=[trained], engine=engine)
    assert trainer.global_step == 2 and len(module.calls) == 2
    update = trained.batches[0].update
    fresh = built(_module(tiny_model_dir))
    losses, kls, scored = [], [], []
    for weights, micro, output in module.calls:  # one micro-batch, the whole Experience, each
        fresh.policy.load_state_dict(weights)
        with torch.no_grad():
            logprobs, _ = fresh.policy_logprobs(micro.sequences)
        scored.append(logprobs)
        mask, old, ref = micro.completion_mask, micro.old_logprobs, micro.ref_logprobs
        losses.append(_naive_grpo_loss(logprobs, old, ref, micro.advantages, mask, eps, 0.04))
        kls.append(_naive_k3_mean(logprobs, ref, mask))
        # float32 sums of 8 x 8 terms of size ~1 (advantages): a few ulps of 1 (1.2e-7) off
        # the float64 sum; the second step's KL term, beta x ~1e-4 = ~4e-6, is well above it.
        assert output.stats["loss"].item() == pytest.approx(losses[-1], abs=2e-7)
    # pi_old from the rollout is the policy at the weights the update started from.
    torch.testing.assert_close(update.old_logprobs, scored[0], rtol=0, atol=1e-6)
    assert abs(losses[1]) > 1e-3 and kls[1] > 0  # the second step: far from the trivial 0
    assert module.calls[1][2].stats["clip_ratio"] > 0  # and the clip is part of its value
    logged = trainer.callback_metrics
    assert logged["rollout/logprob_mismatch_k3"].item() < 1e-9
    assert logged["rollout/weights_version"].item() == 0
    # Logged once per Experience: the mean over its 2 optimizer steps.
    assert logged["train/loss"].item() == pytest.approx(sum(losses) / 2, abs=2e-7)
    # float32 k3 = exp(d) - d - 1 cancels to ~1e-4 from terms of ~1: each token is off by
    # up to an ulp of 1 (1.2e-7), and so is their mean.
    assert logged["train/kl"].item() == pytest.approx(sum(kls) / 2, abs=1.2e-7)
    after = module.policy.state_dict()
    changed = {k for k, v in trained.weights[0].items() if not torch.equal(v, after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_num_iterations_takes_several_steps_on_one_rollout(tiny_model_dir):
    torch.manual_seed(0)
    trained = Trained()
    module = _module(tiny_model_dir, num_iterations=2)
    trainer = _fit(
        module, tiny_model_dir, steps=2, extra_callbacks=[trained], engine=PackedEngine()
    )
    rollout, update = trained.batches[0].experience, trained.batches[0].update
    assert trainer.global_step == 2 and update.optimizer_steps == 2
    assert rollout.old_logprobs is not None and update.old_logprobs is rollout.old_logprobs
    fresh = built(_module(tiny_model_dir))
    fresh.policy.load_state_dict(trained.weights[0])
    with torch.no_grad():
        expected, _ = fresh.policy_logprobs(rollout.sequences)
    torch.testing.assert_close(rollout.old_logprobs, expected, rtol=0, atol=1e-6)
    # The packed engine sampled from the same weights: its logprobs are the trainer's.
    mask = rollout.completion_mask
    torch.testing.assert_close(rollout.sampler_logprobs[mask], expected[mask], rtol=0, atol=1e-5)
    assert trainer.callback_metrics["rollout/logprob_mismatch_max_abs"].item() < 1e-5


def test_without_rollout_callback_the_error_says_what_to_add(tiny_model_dir):
    module = _module(tiny_model_dir)
    with pytest.raises(RuntimeError, match="add lit_rl.callbacks.RolloutCallback"):
        module.training_step({"input_ids": torch.zeros(1, 1)}, 0)
    trainer = rollout_trainer(rollout=Callback())  # a Trainer whose callbacks make no rollouts
    data = PromptDataModule(tokenizer=str(tiny_model_dir), batch_size=2, num_train=4, num_val=0)
    with pytest.raises(RuntimeError, match="found no Experience for this batch"):
        trainer.fit(_module(tiny_model_dir), data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_generations=1), "num_generations must be >= 2"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(beta=-1.0), "beta and kl_coef must be >= 0"),
        (dict(num_iterations=0), "num_iterations must be >= 1"),
        (dict(epsilon=1.5), "epsilon must be in \\(0, 1\\]"),
        (dict(surrogate="soft"), "surrogate must be 'clip', 'cispo' or 'sapo'"),
        (
            dict(surrogate="cispo", importance_sampling_level="sequence"),
            "cispo weighs each token .* importance_sampling_level: token",
        ),
        (dict(surrogate="sapo", sapo_temperature_neg=0.0), "SAPO's temperatures must be > 0"),
        (dict(importance_sampling_level="group"), "must be 'token' or 'sequence'"),
        (dict(loss_type="bogus"), "unknown loss_type"),
        (
            dict(kl_coef=0.1, advantage_estimator=ProcessSupervised()),
            "ProcessSupervised does not read: put the KL in the loss",
        ),
    ],
)
def test_bad_config_values_are_named(tiny_model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module(tiny_model_dir, **kwargs)


def _naive_completion_logprobs(model, sequences, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) of each completion token, from the full logits of a
    plain forward pass: the logits at column c score the token at column c + 1."""
    mask = sequences.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding does not advance positions
    with torch.no_grad():
        logits = model(sequences.input_ids, attention_mask=mask, position_ids=positions).logits
    length, t = sequences.input_ids.shape[1], sequences.num_completion_tokens
    scored = torch.log_softmax(logits[:, length - t - 1 : length - 1].float() / temperature, -1)
    return scored.gather(-1, sequences.input_ids[:, -t:, None]).squeeze(-1)


def test_full_finetune_keeps_a_frozen_reference(tiny_model_dir):
    torch.manual_seed(0)
    module = _module(tiny_model_dir, lora=None, temperature=0.7)
    trained = Trained()
    _fit(module, tiny_model_dir, steps=2, extra_callbacks=[trained])
    reference = module.models.reference
    assert reference is not None and reference is not module.policy
    assert not any(p.requires_grad for p in reference.parameters())
    # After two full-finetuning steps the reference is still the checkpoint, bit for bit,
    # and the policy has left it.
    loaded = LlamaForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()
    original, frozen = loaded.state_dict(), reference.state_dict()
    assert frozen.keys() == original.keys()
    assert all(torch.equal(frozen[name], original[name]) for name in original)
    policy = module.policy.state_dict()
    assert any(not torch.equal(policy[name], original[name]) for name in original)
    # pi_ref of the second rollout, sampled after the first step, is the checkpoint's.
    e = trained.batches[1].experience
    expected = _naive_completion_logprobs(loaded, e.sequences, temperature=0.7)
    # Same weights, same float32 forward (equal to the bit on this CPU); 1e-6 leaves room for
    # another matmul kernel where only the last T + 1 positions are projected.
    torch.testing.assert_close(e.ref_logprobs, expected, rtol=0, atol=1e-6)
    assert built(_module(tiny_model_dir, lora=None, beta=0.0)).models.reference is None


def test_prompt_plus_completion_longer_than_context_is_refused(tiny_model_dir):
    module = _module(tiny_model_dir, max_completion_length=100)  # tiny model context: 2048
    data = PromptDataModule(
        tokenizer=str(tiny_model_dir), batch_size=2, num_train=8, max_prompt_length=1950
    )
    trainer = rollout_trainer()
    with pytest.raises(ValueError, match="= 2050 exceeds the model's context of 2048 tokens"):
        trainer.fit(module, data)


def test_the_dtype_choice_and_its_reason_are_logged(tiny_model_dir, caplog):
    with caplog.at_level("INFO"):
        built(_module(tiny_model_dir))
    assert "lit_rl: float32 weights (set explicitly)" in caplog.text


class GradientsAndLayerCalls(Callback):
    """The first optimizer step's gradients, and how often decoder layer 0 ran with grad."""

    def __init__(self):
        self.grads, self.calls, self.dropout_on = None, 0, None

    def on_fit_start(self, trainer, pl_module):
        layer = pl_module.policy.get_base_model().get_decoder().layers[0]
        # A pre-hook: the recompute stops once it has what backward needs, maybe mid-module.
        layer.self_attn.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += torch.is_grad_enabled()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {
                n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }
            dropouts = [m for m in pl_module.modules() if isinstance(m, torch.nn.Dropout)]
            self.dropout_on = any(m.training for m in dropouts)


def test_activation_checkpointing_recomputes_layers_without_changing_gradients(tiny_model_dir):
    # lora_dropout 0.5: if checkpointing switched dropout on, the gradients would differ.
    lora = LoraConfig(**{**TINY_LORA, "lora_dropout": 0.5})
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = _module(
            tiny_model_dir,
            lora=lora,
            activation_checkpointing=checkpointing,
            gradient_accumulation_steps=1,  # one forward per update: its layer calls counted
        )
        probe = GradientsAndLayerCalls()
        _fit(module, tiny_model_dir, extra_callbacks=[probe])
        assert probe.dropout_on is False  # LoRA's dropout modules exist and stay off
        results.append(probe)
    plain, checkpointed = results
    assert plain.calls == 1 and checkpointed.calls == 2  # forward, and its recompute in backward
    for name, grad in plain.grads.items():
        torch.testing.assert_close(checkpointed.grads[name], grad, rtol=1e-5, atol=1e-7)


def test_the_kl_in_the_reward_is_an_option_of_grpo(tiny_model_dir):
    """kl_coef folds k1 KL(pi_old || pi_ref) into the per-token reward (REINFORCE++-style);
    the group statistics are then of each completion's return."""
    torch.manual_seed(0)
    module = _module(tiny_model_dir, beta=0.0, kl_coef=0.2, advantage_estimator=LeaveOneOut())
    assert module.model_recipe.reference and module.needs_old_logprobs
    trained = Trained()
    trainer = _fit(module, tiny_model_dir, steps=2, extra_callbacks=[trained])
    e = trained.batches[1].experience  # the policy has moved from the reference by then
    mask = e.completion_mask
    # k1 by hand, log pi_old - log pi_ref: the same float32 subtraction, so exactly equal.
    kl = e.old_logprobs - e.ref_logprobs
    assert (kl * mask).abs().sum() > 0
    assert torch.equal(e.kl, kl)
    # r_t = -0.2 k1_t on counted tokens, plus the reward on the last one (masks are prefixes).
    shaped = -0.2 * kl * mask
    shaped[torch.arange(len(e)), mask.sum(1) - 1] += e.rewards
    # float32 products and sums of terms < 2: within an ulp or two of 2 (2.4e-7).
    torch.testing.assert_close(e.token_rewards, shaped, rtol=0, atol=5e-7)
    returns = shaped.sum(1).view(-1, 4)
    baseline = (returns.sum(1, keepdim=True) - returns) / 3
    torch.testing.assert_close(
        e.advantages, (returns - baseline).reshape(-1, 1) * mask, rtol=0, atol=1e-6
    )
    assert "train/kl" not in trainer.callback_metrics
    # rollout/kl of the last batch: each completion's summed k1, averaged over completions
    # (not a token mean: completions of 1 to 8 tokens make the two differ).
    sequence_kl = (kl.double() * mask).sum(1).mean().item()
    assert sequence_kl != pytest.approx((kl.double()[mask]).mean().item(), abs=1e-4)
    # float32 sums of 8 terms of ~1e-2: ~1e-9 off.
    assert trainer.callback_metrics["rollout/kl"].item() == pytest.approx(sequence_kl, abs=1e-8)
    # rollout/reward is the reward's; rollout/return is what the estimator saw, minus the KL.
    metrics = trainer.callback_metrics
    assert metrics["rollout/reward"].item() == pytest.approx(e.rewards.mean().item())
    assert metrics["rollout/return"].item() == pytest.approx(returns.mean().item())
    assert metrics["rollout/return"] < metrics["rollout/reward"]


def test_gspo_trains_on_the_sequence_ratio(tiny_model_dir):
    """GSPO (Zheng et al., 2025, Eq. 5-7), by hand on the second optimizer step of one
    Experience, where the policy has moved: per completion the length-normalised ratio
    s_i = exp(mean_t(log pi - log pi_old)), clipped to [1 - eps, 1 + eps_high], times A_i."""
    torch.manual_seed(0)
    eps, eps_high = 3e-4, 4e-4
    settings = dict(
        importance_sampling_level="sequence",
        epsilon=eps,
        epsilon_high=eps_high,
        beta=0.0,
        num_iterations=2,
        gradient_accumulation_steps=1,
    )
    module = RecordingGRPO(**tiny_module_args(tiny_model_dir, **settings))
    trainer = _fit(module, tiny_model_dir, steps=2)
    assert trainer.global_step == 2 and len(module.calls) == 2
    weights, micro, output = module.calls[1]
    fresh = built(_module(tiny_model_dir))
    fresh.policy.load_state_dict(weights)
    with torch.no_grad():
        logprobs, _ = fresh.policy_logprobs(micro.sequences)
    mask, old = micro.completion_mask, micro.old_logprobs
    objectives, clipped = [], 0
    for i in range(len(micro)):
        row = mask[i]
        s = torch.exp((logprobs[i][row] - old[i][row]).mean()).item()
        advantage = micro.advantages[i][row][0].item()
        bounded = min(max(s, 1 - eps), 1 + eps_high)
        objectives.append(min(s * advantage, bounded * advantage))
        clipped += int(row.sum()) * (s * advantage > bounded * advantage)
    expected = -sum(objectives) / len(objectives)
    assert micro.advantages.abs().sum() > 0 and expected != 0
    assert output.stats["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert output.stats["clip_ratio"].item() == pytest.approx(clipped / int(mask.sum()))
    assert clipped > 0  # GSPO's tight range clips whole sequences
    # The token ratio would give another loss: the sequence level is what was trained.
    token_loss, _ = grpo_loss(logprobs, old, None, micro.advantages, mask, eps, eps_high, 0.0)
    assert abs(token_loss.item() - expected) > 1e-5


def test_the_frozen_reference_of_full_finetuning_never_runs_dropout(tmp_path):
    """A model with dropout (as GPT-2 and OPT ship): after train(), which Lightning's fit and
    PolicyModule.on_fit_start call, neither the policy nor the frozen reference copy samples
    dropout masks, so pi_ref (and the KL) is a function of the weights, not noise."""
    tokenizer = build_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, attention_dropout=0.5
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    module = built(_module(tmp_path, lora=None))
    module.train()
    reference = module.models.reference
    assert reference is not None
    for network in (module.policy, reference):
        assert not any(m.training for m in network.modules())
    rollout = make_rollout(module.tokenizer, ["abc", "a longer prompt"])
    with torch.no_grad():
        ref_logprobs = module.logprobs_and_values(rollout.sequences).ref_logprobs
    # The same checkpoint, loaded apart and in eval mode: attention dropout off.
    loaded = LlamaForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    expected = _naive_completion_logprobs(loaded, rollout.sequences)
    # Same weights, same float32 forward; dropout at 0.5 would move them by O(1).
    torch.testing.assert_close(ref_logprobs, expected, rtol=0, atol=1e-6)


def test_float16_weights_on_a_cpu_warn_with_the_fix(tiny_model_dir):
    with pytest.warns(UserWarning, match="float16 on a CPU is emulated .* use dtype auto"):
        built(_module(tiny_model_dir, dtype="float16"))


def test_an_overlong_buffer_longer_than_the_length_budget_is_refused(tiny_model_dir):
    from lit_rl.experience import Overlong

    with pytest.raises(ValueError, match=r"buffer_length \(9\) must be <= the length budget.*: 8"):
        _module(tiny_model_dir, max_completion_length=8, overlong=Overlong(buffer_length=9))
