"""Activation checkpointing for a policy that stays in eval mode.

Recomputing each decoder layer's activations in the backward pass instead of storing them
trades one more forward pass through the layers for most of the training step's activation
memory. transformers checkpoints a layer only while that layer is in training mode, and lit_rl
keeps the policy in eval mode so that no dropout ever runs (pi, pi_old and pi_ref must be one
function); ``arm_checkpointed_layers`` marks the layer modules alone as training, never their
children, so checkpointing runs and every dropout stays off. Any ``eval()`` (generation calls
it) disarms them again; arm them right before each update.
"""

from peft import PeftModel
from torch import nn
from transformers import GradientCheckpointingLayer


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Make every decoder layer of ``model`` (a transformers model, or peft around one)
    recompute its activations in backward (non-reentrant ``torch.utils.checkpoint``)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    settings = {"use_reentrant": False}
    # transformers 5 renamed gradient_checkpointing_enable (the old name warns).
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)


def arm_checkpointed_layers(model: nn.Module) -> None:
    """Set ``training`` on the checkpointed layer modules only (not recursively), right before
    an update. Passes without gradients (generation, reference) never recompute."""
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True
