import copy

import pytest
import torch
from lightning.pytorch import Callback
from peft import LoraConfig
from transformers import LlamaForCausalLM

from lit_rl.algorithms import (
    group_normalized_advantages,
    grpo_loss,
    kl_penalty,
    token_level_rewards,
)
from lit_rl.data import PromptDataModule
from lit_rl.experience import LeaveOneOut, ProcessSupervised
from lit_rl.modules import GRPOModule
from lit_rl.rollout import HFGenerateEngine, PackedEngine
from tests.conftest import (
    TINY_LORA,
    build_tokenizer,
    built,
    fit_rollouts,
    make_rollout,
    rollout_trainer,
    tiny_llama_config,
    tiny_module_args,
)


class Capture(Callback):
    """Keeps the first rollout and the policy weights it was sampled with."""

    def __init__(self):
        self.rollout = None
        self.weights = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.rollout is None:
            self.rollout = batch["experience"]
            self.weights = copy.deepcopy(pl_module.policy.state_dict())


def _module(tiny_model_dir, **kwargs):
    return GRPOModule(**tiny_module_args(tiny_model_dir, **kwargs))


def _fit(module, tiny_model_dir, steps=1, extra_callbacks=(), engine=None):
    return fit_rollouts(module, tiny_model_dir, steps, extra_callbacks, engine)


# None: the default engine (PackedEngine on a CPU); generate stays covered inside the loop.
ENGINES = pytest.mark.parametrize("engine", [None, HFGenerateEngine()], ids=["default", "generate"])


@ENGINES
def test_rollout_batch_contents(tiny_model_dir, engine):
    torch.manual_seed(0)
    capture = Capture()
    _fit(_module(tiny_model_dir), tiny_model_dir, extra_callbacks=[capture], engine=engine)
    r = capture.rollout
    n, t = r.completion_mask.shape
    assert n == 2 * 4 and 1 <= t <= 8
    assert r.input_ids.shape[0] == n and r.input_ids.shape == r.attention_mask.shape
    # completion_mask is a prefix per row (right padding)
    assert torch.equal(r.completion_mask, r.completion_mask.cummin(dim=1).values)
    torch.testing.assert_close(
        r.advantages, group_normalized_advantages(r.rewards, 4)[:, None] * r.completion_mask
    )
    # mu = 1: on-policy, so the update's own first forward pass gave pi_old; the engine's
    # logprobs of its samples are the same numbers (float32, the same weights).
    mask = r.completion_mask
    torch.testing.assert_close(r.sampler_logprobs[mask], r.old_logprobs[mask], rtol=0, atol=1e-5)
    # LoRA starts with B = 0, so the policy equals the reference (adapters off) at step 0.
    assert r.ref_logprobs.shape == (n, t)
    assert len(r.completions) == n and r.prompts[0] == r.prompts[3] != r.prompts[4]
    assert set(r.reward_components) == {"contains_target", "brevity"}


@ENGINES
def test_training_step_is_grpo_loss_and_updates_only_adapters(tiny_model_dir, engine):
    torch.manual_seed(0)
    capture = Capture()
    module = _module(tiny_model_dir)
    trainer = _fit(module, tiny_model_dir, extra_callbacks=[capture], engine=engine)
    # Recompute the loss with the weights the step started from.
    fresh = built(_module(tiny_model_dir))
    fresh.policy.load_state_dict(capture.weights)
    r = capture.rollout
    logprobs, _ = fresh.policy_logprobs(r.sequences)
    expected, stats = grpo_loss(
        logprobs,
        logprobs.detach(),
        r.ref_logprobs,
        r.advantages,
        r.completion_mask,
        epsilon=0.2,
        beta=0.04,
    )
    torch.testing.assert_close(r.old_logprobs, logprobs.detach(), rtol=0, atol=1e-6)
    logged = trainer.callback_metrics
    assert logged["rollout/logprob_mismatch_k3"].item() < 1e-9
    assert logged["rollout/weights_version"].item() == 0
    assert logged["train/loss"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert logged["train/kl"].item() == pytest.approx(stats["kl"].item(), abs=1e-6)
    assert trainer.global_step == 1
    after = module.policy.state_dict()
    changed = {k for k, v in capture.weights.items() if not torch.equal(v, after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_num_iterations_takes_several_steps_on_one_rollout(tiny_model_dir):
    torch.manual_seed(0)
    capture = Capture()
    module = _module(tiny_model_dir, num_iterations=2)
    trainer = _fit(
        module, tiny_model_dir, steps=2, extra_callbacks=[capture], engine=PackedEngine()
    )
    assert trainer.global_step == 2 and capture.rollout.old_logprobs is not None
    fresh = built(_module(tiny_model_dir))
    fresh.policy.load_state_dict(capture.weights)
    with torch.no_grad():
        expected, _ = fresh.policy_logprobs(capture.rollout.sequences)
    torch.testing.assert_close(capture.rollout.old_logprobs, expected, rtol=0, atol=1e-6)
    # The packed engine sampled from the same weights: its logprobs are the trainer's.
    mask = capture.rollout.completion_mask
    torch.testing.assert_close(
        capture.rollout.sampler_logprobs[mask], expected[mask], rtol=0, atol=1e-5
    )
    assert trainer.callback_metrics["rollout/logprob_mismatch_max_abs"].item() < 1e-5


def test_without_rollout_callback_the_error_says_what_to_add(tiny_model_dir):
    module = _module(tiny_model_dir)
    with pytest.raises(RuntimeError, match="add lit_rl.callbacks.RolloutCallback"):
        module.training_step({"input_ids": torch.zeros(1, 1)}, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_generations=1), "num_generations must be >= 2"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(beta=-1.0), "beta and kl_coef must be >= 0"),
        (dict(num_iterations=0), "num_iterations must be >= 1"),
        (dict(epsilon=1.5), "epsilon must be in \\(0, 1\\)"),
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


def test_full_finetune_keeps_a_frozen_reference(tiny_model_dir):
    module = built(_module(tiny_model_dir, lora=None))
    assert module.reference is not None
    assert not any(p.requires_grad for p in module.reference.parameters())
    assert built(_module(tiny_model_dir, lora=None, beta=0.0)).reference is None


def test_prompt_plus_completion_longer_than_context_is_refused(tiny_model_dir):
    module = _module(tiny_model_dir, max_completion_length=100)  # tiny model context: 512
    data = PromptDataModule(
        tokenizer=str(tiny_model_dir), batch_size=2, num_train=8, max_prompt_length=450
    )
    trainer = rollout_trainer()
    with pytest.raises(ValueError, match="= 550 exceeds the model's context of 512 tokens"):
        trainer.fit(module, data)


def test_policy_never_runs_dropout(tiny_model_dir):
    module = built(_module(tiny_model_dir))
    module.train()
    assert module.training and not any(m.training for m in module.policy.modules())


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
    assert module.uses_reference and module.needs_old_logprobs
    capture = Capture()
    trainer = _fit(module, tiny_model_dir, steps=2, extra_callbacks=[capture])
    e = capture.rollout
    kl = kl_penalty(e.old_logprobs, e.ref_logprobs, "k1")
    torch.testing.assert_close(e.kl, kl)
    torch.testing.assert_close(
        e.token_rewards, token_level_rewards(e.rewards, e.completion_mask, kl, kl_coef=0.2)
    )
    returns = e.token_rewards.sum(1).view(-1, 4)
    baseline = (returns.sum(1, keepdim=True) - returns) / 3
    torch.testing.assert_close(
        e.advantages, (returns - baseline).reshape(-1, 1) * e.completion_mask
    )
    assert "rollout/kl" in trainer.callback_metrics and "train/kl" not in trainer.callback_metrics


def test_gspo_trains_on_the_sequence_ratio(tiny_model_dir):
    torch.manual_seed(0)
    module = _module(
        tiny_model_dir,
        importance_sampling_level="sequence",
        epsilon=3e-4,
        epsilon_high=4e-4,
        num_iterations=2,
    )
    trainer = _fit(module, tiny_model_dir, steps=2)
    # The second pass sees a moved policy: sequence ratios leave 1, and GSPO's tight range clips.
    assert trainer.global_step == 2
    assert trainer.callback_metrics["train/clip_ratio"] > 0


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
    assert module.reference is not None
    for network in (module.policy, module.reference):
        assert not any(m.training for m in network.modules())
    rollout = make_rollout(module.tokenizer, ["abc", "a longer prompt"])
    with torch.no_grad():
        first = module.reference_logprobs(rollout.sequences)
        second = module.reference_logprobs(rollout.sequences)
    assert torch.equal(first, second)


def test_float16_weights_on_a_cpu_warn_with_the_fix(tiny_model_dir):
    with pytest.warns(UserWarning, match="float16 on a CPU is emulated .* use dtype auto"):
        built(_module(tiny_model_dir, dtype="float16"))
