"""VLLMEngine's request, sync and sleep plumbing, against a stand-in ``vllm`` module."""

import os
import sys

import pytest
import torch

from lit_rl.modules import GRPOModule
from lit_rl.rollout import LogprobCheck, VLLMEngine
from tests.conftest import fit_rollouts, tiny_module_args
from tests.rollout import fake_vllm

# float32 on both sides: the engine's logprobs must be the trainer's to numerical noise.
STRICT = LogprobCheck(warn_k3=1e-6, error_k3=1e-5)


def _fit(tiny_model_dir, engine, steps=3, **module_args):
    torch.manual_seed(0)
    module = GRPOModule(
        **tiny_module_args(tiny_model_dir, **{"learning_rate": 5e-2, **module_args})
    )
    trainer = fit_rollouts(module, tiny_model_dir, steps, engine=engine, logprob_check=STRICT)
    return trainer, fake_vllm.LLM.instances[-1]


def test_lora_policies_sync_as_a_new_adapter_per_version(tiny_model_dir, monkeypatch):
    fake_vllm.install(monkeypatch)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    trainer, llm = _fit(tiny_model_dir, VLLMEngine())
    # vLLM's launcher variables were there for its creation only (left behind, they would
    # make a later Lightning launch believe it is one process of one).
    assert "WORLD_SIZE" not in os.environ
    assert llm.kwargs["enable_lora"] and llm.kwargs["max_lora_rank"] == 4
    assert llm.kwargs["enable_sleep_mode"]
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    generations = [arg for call, arg in llm.calls if call == "generate"]
    assert generations == [2, 3, 4]  # one adapter id per weights version 0, 1, 2
    assert not any(call == "load_weights" for call, _ in llm.calls)  # the base stays put
    # Awake only to generate: wake, generate, sleep at every step.
    lifecycle = [call for call, _ in llm.calls]
    assert lifecycle == ["generate", "sleep"] + ["wake_up", "generate", "sleep"] * 2
    # The adapters synced were the trained ones: the check passed at float32 precision.
    assert trainer.callback_metrics["rollout/logprob_mismatch_k3"].item() < 1e-6
    assert trainer.callback_metrics["rollout/weights_version"].item() == 2


def test_merged_weights_sync_by_checkpoint_names(tiny_model_dir, monkeypatch):
    fake_vllm.install(monkeypatch)
    trainer, llm = _fit(tiny_model_dir, VLLMEngine(lora_as_adapter=False, sleep_mode=False))
    assert "enable_lora" not in llm.kwargs
    loads = [names for call, names in llm.calls if call == "load_weights"]
    assert len(loads) == 3
    assert "model.layers.0.self_attn.q_proj.weight" in loads[0]
    assert not any("lora" in name or "base_layer" in name for name in loads[0])
    assert [call for call, _ in llm.calls].count("reset_prefix_cache") == 3
    assert trainer.callback_metrics["rollout/logprob_mismatch_k3"].item() < 1e-6


def test_full_fine_tuning_syncs_every_weight(tiny_model_dir, monkeypatch):
    fake_vllm.install(monkeypatch)
    trainer, llm = _fit(tiny_model_dir, VLLMEngine(), steps=2, lora=None, learning_rate=1e-3)
    assert len([1 for call, _ in llm.calls if call == "load_weights"]) == 2
    assert trainer.callback_metrics["rollout/logprob_mismatch_k3"].item() < 1e-6


def test_a_nucleus_is_refused(tiny_model_dir, monkeypatch):
    fake_vllm.install(monkeypatch)
    with pytest.raises(ValueError, match="top_p=0.9: vLLM's logprobs would be of the"):
        _fit(tiny_model_dir, VLLMEngine(), top_p=0.9)


def test_without_vllm_the_error_says_how_to_install_it(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'lit_rl\[vllm\]'"):
        _fit(tiny_model_dir, VLLMEngine())
