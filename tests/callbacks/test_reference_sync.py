import copy
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from lit_rl.callbacks import ReferenceSyncCallback
from lit_rl.models import PolicyModels
from lit_rl.models.lora import lora_layers
from lit_rl.modules import GRPOModule
from lit_rl.rewards import FormatReward
from tests.conftest import built, make_rollout


def _module(tiny_model_dir, lora=True):
    config = (
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        if lora
        else None
    )
    module = built(
        GRPOModule(reward=FormatReward(), model=str(tiny_model_dir), dtype="float32", lora=config)
    )
    with torch.no_grad():  # pretend training moved the policy away from the reference
        for name, p in module.policy.named_parameters():
            if "lora_B" in name or (not lora and "mlp" in name):
                p.add_(torch.randn_like(p) * 0.3)
    return module


def _logprobs(module, rollout):
    with torch.no_grad():
        sequences = rollout.sequences
        return module.policy_logprobs(sequences)[0], module.logprobs_and_values(
            sequences
        ).ref_logprobs


@pytest.mark.parametrize("lora", [True, False])
def test_full_sync_makes_reference_equal_policy(tiny_model_dir, lora):
    module = _module(tiny_model_dir, lora)
    rollout = make_rollout(module.tokenizer, ["abc", "a longer prompt", "x", "yy"])
    policy_before, ref_before = _logprobs(module, rollout)
    assert (policy_before - ref_before).abs().max() > 1e-3
    ReferenceSyncCallback(ref_sync_steps=1, ref_sync_mixup_alpha=1.0).sync(module.models)
    policy_after, ref_after = _logprobs(module, rollout)
    torch.testing.assert_close(policy_after, policy_before, rtol=0, atol=1e-5)  # policy unchanged
    torch.testing.assert_close(ref_after, policy_after, rtol=0, atol=1e-5)


def test_lora_mixup_merges_alpha_of_the_delta_and_resets_adapter_state(tiny_model_dir):
    module = _module(tiny_model_dir)
    layer = lora_layers(module.policy)[0]
    params = [p for p in module.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    assert len(optimizer.state) == len(params)
    with torch.no_grad():
        delta_before = layer.get_delta_weight("default").detach().clone()
        base_before = layer.get_base_layer().weight.detach().clone()
    ReferenceSyncCallback(ref_sync_mixup_alpha=0.25).sync(module.models, [optimizer])
    # reference = W + 0.25 dW; the adapter keeps 0.75 dW so the policy is still W + dW
    torch.testing.assert_close(layer.get_base_layer().weight, base_before + 0.25 * delta_before)
    torch.testing.assert_close(layer.get_delta_weight("default"), 0.75 * delta_before)
    assert len(optimizer.state) == 0


def test_frozen_copy_mixup_is_a_lerp(tiny_model_dir):
    module = _module(tiny_model_dir, lora=False)
    ref_before = [p.clone() for p in module.models.reference.parameters()]
    ReferenceSyncCallback(ref_sync_mixup_alpha=0.5).sync(module.models)
    for before, ref, policy in zip(
        ref_before, module.models.reference.parameters(), module.policy.parameters(), strict=True
    ):
        torch.testing.assert_close(ref, 0.5 * before + 0.5 * policy)


def test_schedule_state_and_validation():
    # A frozen-copy reference on two toy layers: the hook reads only the trainer's step and
    # optimizers and the module's models.
    policy, reference = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    reference.requires_grad_(False)
    module = SimpleNamespace(models=PolicyModels(policy, reference, uses_reference=True))
    assert not torch.equal(reference.weight, policy.weight)  # two random initialisations
    original = copy.deepcopy(reference.state_dict())
    callback = ReferenceSyncCallback(ref_sync_steps=3, ref_sync_mixup_alpha=1.0)
    callback.load_state_dict({"last_sync_step": 6})  # resumed: the last sync was at step 6

    def batch_end(step: int) -> None:
        trainer = SimpleNamespace(global_step=step, optimizers=[])
        callback.on_train_batch_end(trainer, module, None, None, 0)

    batch_end(8)  # 8 - 6 = 2 steps since the sync: not yet
    state = reference.state_dict()
    assert all(torch.equal(state[name], original[name]) for name in original)
    assert callback.state_dict() == {"last_sync_step": 6}
    batch_end(9)  # 9 - 6 = 3: sync; alpha 1 makes the reference the policy
    assert torch.equal(reference.weight, policy.weight) and torch.equal(reference.bias, policy.bias)
    assert callback.state_dict() == {"last_sync_step": 9}
    with pytest.raises(ValueError, match="ref_sync_mixup_alpha must be in"):
        ReferenceSyncCallback(ref_sync_mixup_alpha=0.0)
    with pytest.raises(ValueError, match="ref_sync_steps must be >= 1"):
        ReferenceSyncCallback(ref_sync_steps=0)


def test_lora_sync_refuses_bf16_base_weights_that_would_change_the_policy(tiny_model_dir):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    module = built(
        GRPOModule(reward=FormatReward(), model=str(tiny_model_dir), dtype="bfloat16", lora=config)
    )
    layer = lora_layers(module.policy)[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.add_(1e-3)  # a small trained delta
        delta = layer.get_delta_weight("default").float()
        base = layer.get_base_layer().weight
        # The defect being refused: bf16 rounding loses part of alpha x delta (here ~14 %; the
        # smaller the delta against the weight, the more), while B still shrinks by 1 - alpha.
        merged = (base + 0.6 * delta.to(base.dtype)).float() - base.float()
        assert (merged - 0.6 * delta).abs().mean() > 0.05 * (0.6 * delta).abs().mean()
    with pytest.raises(ValueError, match="Set the module's dtype to float32"):
        ReferenceSyncCallback().sync(module.models)
    # Refused when training starts, not at the first sync, through the Trainer's hook.
    with pytest.raises(ValueError, match="rounding discards part of the delta"):
        ReferenceSyncCallback().on_fit_start(None, module)
