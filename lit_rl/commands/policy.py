"""A trained policy for the commands outside training (``generate``, ``export``): a checkpoint
(a ``.ckpt`` file, or FSDP2's folder of shards) with the settings of the run that wrote it, or
a model directory, hub id or ``embedded`` with a recipe's settings."""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from lit_rl.data import PromptDataModule
from lit_rl.modules import PolicyModule
from lit_rl.strategies import check_checkpoint_file

# Without a recipe: GRPO's module defaults (temperature 1, 256 tokens), the math reward for
# --score, the chat template without a suffix.
DEFAULT_MODEL: dict[str, Any] = {
    "class_path": "lit_rl.modules.GRPOModule",
    "init_args": {"reward": {"class_path": "lit_rl.rewards.MathCorrectness"}},
}
DEFAULT_DATA: dict[str, Any] = {"class_path": "lit_rl.data.PromptDataModule"}
RUN_CONFIG = "config.yaml"  # what LightningCLI writes into a run's folder


@dataclass
class LoadedPolicy:
    """A policy module with its weights, and the data module that formats its prompts."""

    module: PolicyModule
    data: PromptDataModule
    config: Path | None  # the settings it was built with (None: the defaults above)


def is_checkpoint(path: Path) -> bool:
    """A Lightning checkpoint file, or a torch distributed checkpoint folder (FSDP2)."""
    return path.suffix == ".ckpt" or (path / ".metadata").is_file()


def run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run that wrote ``checkpoint`` (``runs/<name>/version_N/``,
    above ``checkpoints/``)."""
    for folder in list(checkpoint.resolve().parents)[:3]:
        if (folder / RUN_CONFIG).is_file():
            return folder / RUN_CONFIG
    return None


def load_policy(policy: str, config: Path | None = None) -> LoadedPolicy:
    """``policy`` as a module of ``config``'s settings (a recipe or a run's ``config.yaml``).

    A checkpoint keeps the run's model, LoRA and dtype and loads its trained weights; its
    settings default to the run's ``config.yaml``. Any other ``policy`` (a directory, a hub id,
    ``embedded``) replaces the settings' model and is sampled as it is (no LoRA).
    """
    path = Path(policy).expanduser()
    checkpoint = is_checkpoint(path)
    if checkpoint and not path.exists():
        raise FileNotFoundError(f"checkpoint '{policy}' does not exist")
    if config is None and checkpoint:
        config = run_config(path)
        if config is None:
            raise FileNotFoundError(
                f"no {RUN_CONFIG} of the run beside or above '{policy}': pass --config with "
                "the recipe it was trained with"
            )
    settings = yaml.safe_load(config.read_text()) if config is not None else {}
    model = settings.get("model") or DEFAULT_MODEL
    data = settings.get("data") or DEFAULT_DATA
    model.setdefault("init_args", {})
    state = checkpoint_state(path) if checkpoint else None
    if state is not None:  # the weights as trained (FSDP2 keeps float32 where `auto` is bf16)
        model["init_args"]["dtype"] = str(weights_dtype(state)).removeprefix("torch.")
    else:
        model["init_args"] |= {"model": policy, "lora": None}
    data.setdefault("init_args", {})["tokenizer"] = model["init_args"].get("model", "embedded")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(PolicyModule, "model", required=True)
    parser.add_subclass_arguments(PromptDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"model": model, "data": data})
    except ArgumentError as error:
        raise ValueError(f"{config or 'the default settings'}: {error}") from None
    built = parser.instantiate_classes(parsed)
    module: PolicyModule = built.model
    module.configure_model()
    if state is not None:
        module.load_state_dict(state)
    return LoadedPolicy(module, built.data, config)


def weights_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype of the policy's own weights in a module's state dict (not its adapters')."""
    for name, tensor in state.items():
        if name.startswith("models.policy.") and ".lora_" not in name:
            if tensor.is_floating_point():
                return tensor.dtype
    raise ValueError("the checkpoint holds no policy weights (models.policy.*)")


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """The module's full state dict from a checkpoint file or a folder of shards."""
    if not path.is_dir():
        check_checkpoint_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    with tempfile.TemporaryDirectory() as folder:
        whole = Path(folder) / "checkpoint.pt"
        dcp_to_torch_save(path, whole)  # every shard joined, in one process
        return torch.load(whole, map_location="cpu", weights_only=True)["state_dict"]
