"""PolicyModels: the networks an RL update scores with (policy, reference, critic), built once
from a ``ModelRecipe`` in ``LightningModule.configure_model``, where the strategy decides how
their weights materialise and shard."""

from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel
from torch import nn

from lit_rl.algorithms import token_logprobs_with_entropy
from lit_rl.models.checkpointing import enable_activation_checkpointing
from lit_rl.models.dtype import DType, resolve_dtype
from lit_rl.models.loader import load_model
from lit_rl.models.lora import apply_lora
from lit_rl.models.reference import frozen_copy, reference_model
from lit_rl.models.sequences import Sequences
from lit_rl.models.value_head import (
    ValueModel,
    adapter_values,
    add_value_adapter,
    value_adapter_parameters,
)


@dataclass(frozen=True)
class ModelRecipe:
    """What to build: the policy's weights, its LoRA, whether a reference and a critic exist."""

    model: str = "embedded"
    lora: LoraConfig | None = None
    dtype: DType = "auto"
    activation_checkpointing: bool = False
    reference: bool = False  # pi_ref: adapters off with LoRA, else a frozen copy
    # "adapter": a value adapter and head on the policy's backbone; any other string names a
    # separate critic model (a hub id or a directory); None: no critic.
    critic: str | None = None

    def __post_init__(self) -> None:
        if self.critic == "adapter" and self.lora is None:
            raise ValueError(
                "a value adapter on the policy's backbone needs LoRA: set lora, or name a "
                "separate value model (a model name or directory)"
            )


class PolicyModels(nn.Module):
    """The policy (optionally LoRA), its reference and its critic, scored over ``Sequences``.

    With LoRA, the reference is the policy's own weights with every adapter off and the critic
    (``critic="adapter"``) a second adapter plus a scalar head on the same backbone: one copy
    of the base weights serves all three. Without LoRA the reference is a frozen copy and a
    critic is a separate ``ValueModel``. Submodules: ``policy``, ``reference`` (or None),
    ``value_model`` (or None), ``value_head`` (or None) — the units a strategy shards.
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None = None,
        value_model: ValueModel | None = None,
        value_head: nn.Linear | None = None,
        uses_reference: bool = False,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.reference = reference
        self.value_model = value_model
        self.value_head = value_head
        self.uses_reference = uses_reference

    @classmethod
    def build(cls, recipe: ModelRecipe) -> "PolicyModels":
        """Load the weights and attach adapters, reference and critic as ``recipe`` says.

        Every process loads the full weights; a sharding strategy then keeps its shard of
        them. Run under the strategy's ``configure_model`` so it chooses the device.
        """
        weights_dtype = resolve_dtype(recipe.dtype, trains_weights=recipe.lora is None)
        policy: nn.Module = load_model(recipe.model, dtype=weights_dtype.name)
        if recipe.lora is not None:
            policy = apply_lora(policy, recipe.lora)
        if recipe.activation_checkpointing:
            enable_activation_checkpointing(policy)
        reference = None
        if recipe.reference and not isinstance(policy, PeftModel):
            reference = frozen_copy(policy)
        value_model, value_head = None, None
        if recipe.critic == "adapter":
            value_head = add_value_adapter(policy)
        elif recipe.critic is not None:
            critic_dtype = resolve_dtype(recipe.dtype, trains_weights=True)
            value_model = ValueModel.from_pretrained(recipe.critic, critic_dtype.name)
        return cls(policy, reference, value_model, value_head, uses_reference=recipe.reference)

    def train(self, mode: bool = True) -> "PolicyModels":
        super().train(mode)
        # No model here ever runs dropout: pi_old, pi and pi_ref must score the same tokens
        # with the same function, or the ratio and the KL measure noise (the critic likewise).
        for module in self.children():
            module.eval()
        return self

    # ---- the policy and its reference --------------------------------------------------------

    def eos_token_ids(self, tokenizer_eos: int | None) -> list[int]:
        """The tokenizer's EOS and every EOS of the model's ``generation_config``."""
        ids = {tokenizer_eos}
        generation_eos = getattr(
            getattr(self.policy, "generation_config", None), "eos_token_id", None
        )
        ids |= set(generation_eos) if isinstance(generation_eos, list) else {generation_eos}
        return sorted(i for i in ids if i is not None)

    def policy_logprobs(
        self,
        sequences: Sequences,
        temperature: float,
        chunk_size: int,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
        """Per-token logprobs of the completion under the policy (with gradients), and the
        entropy of its token distributions when asked."""
        return completion_logprobs(self.policy, sequences, temperature, chunk_size, with_entropy)

    @torch.no_grad()
    def reference_logprobs(
        self, sequences: Sequences, temperature: float, chunk_size: int
    ) -> torch.Tensor | None:  # [N, T]
        """Per-token logprobs under pi_ref; ``None`` when the algorithm has no reference."""
        if not self.uses_reference:
            return None
        with reference_model(self.policy, self.reference) as reference:
            return completion_logprobs(reference, sequences, temperature, chunk_size)[0]

    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy's trainable parameters (its adapter under LoRA), the critic's excluded."""
        critic = {id(p) for p in self.critic_parameters()}
        return [p for p in self.policy.parameters() if p.requires_grad and id(p) not in critic]

    # ---- the critic ----------------------------------------------------------------------------

    def values(self, sequences: Sequences) -> torch.Tensor:  # [N, T] float32
        """``V(s_t)``: the value of the state before completion token t, read at the position
        whose logits predict token t (the last prompt token for t = 0)."""
        args = (sequences.input_ids, sequences.attention_mask, sequences.position_ids)
        if self.value_model is not None:
            values = self.value_model(*args)
        elif self.value_head is not None:
            values = adapter_values(self.policy, self.value_head, *args)
        else:
            raise ValueError("these models have no critic: build them with a critic")
        return values[:, -(sequences.num_completion_tokens + 1) : -1]

    @property
    def has_critic(self) -> bool:
        return self.value_model is not None or self.value_head is not None

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.value_model is not None:
            return list(self.value_model.parameters())
        if self.value_head is not None:
            return [*value_adapter_parameters(self.policy), *self.value_head.parameters()]
        return []


def completion_logprobs(
    model: nn.Module,
    sequences: Sequences,
    temperature: float,
    chunk_size: int,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # ([N, T], [N, T] or None)
    """Logprobs (and entropies) of the completion tokens under ``model`` at ``temperature``.

    Only the last T+1 positions are projected to the vocabulary (``logits_to_keep``); the
    prompt's logits are never computed.
    """
    num_tokens = sequences.num_completion_tokens
    output = model(
        input_ids=sequences.input_ids,
        attention_mask=sequences.attention_mask,
        position_ids=sequences.position_ids,
        logits_to_keep=num_tokens + 1,
        use_cache=False,
    )
    logits = output.logits[:, :-1]  # [N, T, V]: position t predicts completion token t
    return token_logprobs_with_entropy(
        logits, sequences.completion_ids, temperature, chunk_size, with_entropy
    )
