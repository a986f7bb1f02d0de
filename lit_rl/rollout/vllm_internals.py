"""What ``VLLMEngine`` reads of vLLM beyond its documented API, in one place, pinned to the range
``make test-vllm`` tests (``TESTED_VLLM``, the ``lit_rl[vllm]`` extra's pin).

Everything else goes through ``vllm.LLM``'s public methods (``generate``, ``collective_rpc``,
``apply_model``, ``sleep``/``wake_up``, ``reset_prefix_cache``) and ``vllm.lora.request``. What
is read here may move between vLLM releases: another version is used with a warning naming the
tested one, and a read that fails names this module. Weights read back from vLLM are checked
against the trainer's at every generation (the session's fingerprint check), so a read that
returned the wrong tensors stops the run rather than passing silently.
"""

import importlib
import logging
import typing
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from lit_rl.rollout.fingerprint import adapter_fingerprint, dense_fingerprint

log = logging.getLogger(__name__)

TESTED_VLLM = ((0, 32), (0, 33))  # [first, last): the versions make test-vllm runs
# The adapter ranks vLLM serves (vllm.config.lora.MaxLoRARanks), where it does not say itself.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

Read = TypeVar("Read")


def check_version(vllm: ModuleType) -> None:
    """A warning when ``vllm`` is outside the tested range."""
    version = str(getattr(vllm, "__version__", "0.0"))
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    (first, last) = TESTED_VLLM
    if not first <= major_minor < last:
        log.warning(
            "lit_rl: vLLM %s is untested; VLLMEngine reads a few of its internals "
            "(lit_rl.rollout.vllm_internals) tested on %d.%d: pip install 'lit_rl[vllm]'",
            version,
            *first,
        )


def served_lora_rank(rank: int, vllm: ModuleType) -> int:
    """The smallest adapter rank vLLM serves that holds ``rank`` (it refuses others: a rank-4
    adapter is served with max_lora_rank 8, zero-padded)."""
    lora_config = importlib.import_module(f"{vllm.__name__}.config.lora")
    ranks = typing.get_args(getattr(lora_config, "MaxLoRARanks", None)) or LORA_RANKS
    fitting = [r for r in sorted(ranks) if r >= rank]
    if not fitting:
        raise ValueError(f"vLLM serves LoRA ranks up to {max(ranks)}, the policy's is {rank}")
    return fitting[0]


def sleep_mode_available(vllm: ModuleType) -> bool:
    """Whether vLLM can sleep on this platform (CUDA can; its CPU build cannot)."""
    platforms = importlib.import_module(f"{vllm.__name__}.platforms")
    return bool(platforms.current_platform.is_sleep_mode_available())


def reload_weights(llm: Any, state: dict[str, torch.Tensor]) -> None:  # noqa: ANN401
    """Weights into vLLM's model in place, by checkpoint names, through its worker's
    ``reload_weights`` (its CPU backend has repacked the linear weights, so they go through
    vLLM's own loading); the prefix cache, of the old weights, is dropped."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
    llm.reset_prefix_cache()


def held_adapter_fingerprint(llm: Any, vllm: ModuleType) -> float:  # noqa: ANN401
    """The fingerprint of the adapter in vLLM's LoRA slot (one slot: ``max_loras=1``; loaded
    by a generation), read from its LoRA layers' stacked weights."""
    layers = importlib.import_module(f"{vllm.__name__}.lora.layers.base_linear")

    def read(model: nn.Module) -> float:
        pairs = [
            (a[0, 0], b[0, 0])
            for module in model.modules()
            if isinstance(module, layers.BaseLinearLayerWithLoRA)
            for a, b in zip(module.lora_a_stacked, module.lora_b_stacked, strict=True)
        ]
        return adapter_fingerprint(pairs)

    return _on_model(llm, read)


def held_dense_fingerprint(llm: Any) -> float:  # noqa: ANN401
    """The fingerprint of vLLM's embedding and norms: what stays readable of weights its CPU
    backend repacks."""

    def read(model: nn.Module) -> float:
        named = list(model.named_parameters())
        embedding = [p for n, p in named if "embed_tokens" in n and p.ndim == 2]
        norms = [p for n, p in named if "norm" in n and p.ndim == 1]
        return dense_fingerprint(embedding + norms)

    return _on_model(llm, read)


def _on_model(llm: Any, read: Callable[[nn.Module], Read]) -> Read:  # noqa: ANN401
    """``read`` of the model of vLLM's one in-process worker (``LLM.apply_model``)."""
    try:
        (value,) = llm.apply_model(read)
    except (AttributeError, TypeError, ValueError) as err:
        raise RuntimeError(
            f"reading vLLM's weights failed ({err!r}): this vLLM's internals differ from the "
            f"tested ones (lit_rl.rollout.vllm_internals, vLLM {TESTED_VLLM[0][0]}."
            f"{TESTED_VLLM[0][1]}); pip install 'lit_rl[vllm]'"
        ) from err
    return value
