"""Value models for PPO: a separate backbone with a linear head, or a value adapter and head on
the policy's own backbone."""

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModel, PreTrainedModel

from lit_rl.models.dtype import DType, resolve_dtype
from lit_rl.models.loader import resolve_model_path
from lit_rl.models.lora import lora_layers


class ValueModel(nn.Module):
    """``V(s_t)`` for every position: backbone hidden states -> ``nn.Linear(hidden, 1)``.

    The backbone is either a separate (usually small) model loaded by name, or a module the
    caller passes, e.g. the decoder of the policy to share it.
    """

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        # Start at V = 0 everywhere so early advantages are the rewards themselves.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "embedded", dtype: DType = "float32"
    ) -> "ValueModel":
        weights_dtype = resolve_dtype(dtype)
        backbone = AutoModel.from_pretrained(
            resolve_model_path(name_or_path, weights_dtype.name), dtype=weights_dtype.torch_dtype
        )
        return cls(backbone)

    def forward(
        self,
        input_ids: torch.Tensor,  # [N, L]
        attention_mask: torch.Tensor,  # [N, L]
        position_ids: torch.Tensor | None = None,  # [N, L]
    ) -> torch.Tensor:  # [N, L] float32
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


# The name of the critic's LoRA adapter beside the policy's ("default") on one backbone.
VALUE_ADAPTER = "value"


def add_value_adapter(policy: PeftModel) -> nn.Linear:
    """Give the LoRA ``policy`` a second adapter for the critic and return its value head.

    The adapter copies the policy adapter's configuration and starts as a zero delta (LoRA's
    B = 0), the head starts at V = 0. One backbone then serves three models: the policy
    (its adapter on), the reference (every adapter off) and the critic (its adapter on).
    """
    config = copy.deepcopy(policy.peft_config[policy.active_adapter])
    policy.add_adapter(VALUE_ADAPTER, config)
    # add_adapter leaves the new adapter frozen while another is active; both train.
    policy.set_requires_grad([policy.active_adapter, VALUE_ADAPTER], requires_grad=True)
    head = nn.Linear(policy.get_base_model().config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def value_adapter_parameters(policy: PeftModel) -> list[nn.Parameter]:
    return [
        param
        for layer in lora_layers(policy)
        for lora in (layer.lora_A, layer.lora_B)
        if VALUE_ADAPTER in lora
        for param in lora[VALUE_ADAPTER].parameters()
    ]


@contextmanager
def value_adapter_active(policy: PeftModel) -> Iterator[None]:
    """Run ``policy`` as the critic's backbone: only the value adapter on."""
    policy_adapter = policy.active_adapter
    trainable = [policy_adapter, VALUE_ADAPTER]
    policy.set_adapter(VALUE_ADAPTER)
    # set_adapter freezes every inactive adapter; autograd would then drop the policy
    # adapter's gradient from a forward pass already recorded. Both stay trainable.
    policy.set_requires_grad(trainable, requires_grad=True)
    try:
        yield
    finally:
        policy.set_adapter(policy_adapter)
        policy.set_requires_grad(trainable, requires_grad=True)


def adapter_values(
    policy: PeftModel,
    head: nn.Linear,
    input_ids: torch.Tensor,  # [N, L]
    attention_mask: torch.Tensor,  # [N, L]
    position_ids: torch.Tensor,  # [N, L]
) -> torch.Tensor:  # [N, L] float32
    """``V(s_t)`` at every position from the backbone under the value adapter: the decoder's
    final hidden states (after the last norm) through ``head``.

    The forward runs through the model's root, not its decoder alone, so that a sharding
    wrapper on the root (FSDP2 keeps the tied embeddings there) gathers what it holds; only
    one position is projected to the vocabulary.
    """
    with value_adapter_active(policy):
        hidden = policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=True,
            logits_to_keep=1,
        ).hidden_states[-1]
    return head(hidden.to(head.weight.dtype)).squeeze(-1).float()
