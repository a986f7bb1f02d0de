"""Settings as a checkpoint's hyperparameters hold them: plain values that load with
weights_only and rebuild the setting."""

import dataclasses
import enum

import torch
from peft import LoraConfig

from lit_rl.algorithms import SamplerCorrection
from lit_rl.experience import Overlong
from lit_rl.state import plain


def test_settings_become_plain_values_that_load_with_weights_only(tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    settings = {
        "lora": lora,
        "sampler_correction": SamplerCorrection("token_tis", high=3.0),
        "overlong": Overlong(buffer_length=16),
        "none": None,
    }
    path = tmp_path / "hparams.pt"
    torch.save({name: plain(value) for name, value in settings.items()}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["sampler_correction"] == {"mode": "token_tis", "low": 0.5, "high": 3.0}
    assert loaded["overlong"] == dataclasses.asdict(Overlong(buffer_length=16))
    assert loaded["none"] is None
    assert sorted(loaded["lora"]["target_modules"]) == ["q_proj", "v_proj"]  # a set, sorted
    assert loaded["lora"]["task_type"] is None or isinstance(loaded["lora"]["task_type"], str)
    rebuilt = LoraConfig(**loaded["lora"])
    assert (rebuilt.r, rebuilt.lora_alpha, rebuilt.target_modules) == (4, 8, lora.target_modules)


def test_enums_and_containers_go_by_value():
    class Kind(enum.Enum):
        A = "a"

    assert plain({"k": Kind.A, "s": {3, 1}, "t": (Kind.A, 2)}) == {
        "k": "a",
        "s": [1, 3],
        "t": ["a", 2],
    }
