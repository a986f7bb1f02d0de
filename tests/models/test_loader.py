from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from lit_rl.models import (
    apply_lora,
    frozen_copy,
    load_model,
    load_tokenizer,
    merged_state_dict,
    reference_model,
    resolve_model_path,
    save_policy,
)
from lit_rl.models.value_head import ValueModel


def _batch(tokenizer, texts=("1+1=", "hello there")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def test_loads_local_directory_with_left_padded_tokenizer(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    batch = _batch(tokenizer)
    assert batch.attention_mask[0, 0] == 0  # the shorter prompt is padded on the left
    assert model(**batch).logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_bfloat16_dtype(tiny_model_dir):
    assert load_model(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_missing_path_error_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*'embedded'"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_hub_ids_the_hub_has_pass_through(monkeypatch):
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, timeout: object())
    assert (
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def _hub_answers(monkeypatch, error: Exception) -> None:
    def model_info(self, repo_id, timeout):
        raise error

    monkeypatch.setattr(HfApi, "model_info", model_info)


def test_a_mistyped_hub_id_fails_at_once_with_the_fix(monkeypatch):
    response = SimpleNamespace(headers={}, status_code=404, request=None)  # the hub's 404
    _hub_answers(monkeypatch, RepositoryNotFoundError("404", response=response))
    with pytest.raises(FileNotFoundError, match="the hub has no such model .* check the id"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruc")


def test_a_hub_id_without_network_or_cache_fails_at_once_with_the_fix(monkeypatch):
    _hub_answers(monkeypatch, OSError("Name or service not known"))
    with pytest.raises(FileNotFoundError, match="cannot be reached .* point HF_HOME"):
        resolve_model_path("someone/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline by choice: transformers reads the cache
    assert resolve_model_path("someone/some-model") == "someone/some-model"


def test_tokenizer_without_pad_gets_one(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert load_tokenizer(str(tmp_path)).pad_token == tokenizer.eos_token


def _lora(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    policy = apply_lora(model, config)
    with torch.no_grad():  # peft starts lora_B at 0; move it so adapters change the outputs
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return policy


def test_lora_reference_is_the_base_model(tiny_model_dir):
    base = load_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer)
    with torch.no_grad():
        base_logits = base(**batch).logits.clone()
    policy = _lora(base)
    assert isinstance(policy, PeftModel)
    with torch.no_grad():
        policy_logits = policy(**batch).logits
        with reference_model(policy, None) as reference:
            reference_logits = reference(**batch).logits
    assert (policy_logits - base_logits).abs().max() > 1e-3  # the adapters do something
    torch.testing.assert_close(reference_logits, base_logits, rtol=0, atol=1e-6)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_frozen_copy_reference_without_lora(tiny_model_dir):
    policy = load_model(str(tiny_model_dir))
    frozen = frozen_copy(policy)
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not any(p.requires_grad for p in frozen.parameters())
    with reference_model(policy, frozen) as reference:
        assert reference is frozen
    with pytest.raises(ValueError, match="frozen reference copy"):
        with reference_model(policy, None):
            pass


def test_save_policy_merges_lora_for_plain_transformers(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = _lora(load_model(str(tiny_model_dir)))
    batch = _batch(tokenizer)
    with torch.no_grad():
        expected = policy(**batch).logits
    assert not any(".lora_" in k or "base_layer" in k for k in merged_state_dict(policy))
    out = save_policy(policy, tokenizer, tmp_path / "policy")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (out / "tokenizer_config.json").is_file()
    # Saving again replaces the directory atomically and leaves no staging directories behind.
    save_policy(policy, tokenizer, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_value_model_shapes_and_zero_init(tiny_model_dir):
    value = ValueModel.from_pretrained(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = _batch(tokenizer)
    v = value(batch.input_ids, batch.attention_mask)
    assert v.shape == batch.input_ids.shape and v.dtype == torch.float32
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert value.head.weight.grad is not None


def test_export_of_a_bf16_lora_policy_keeps_the_small_delta(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = apply_lora(
        load_model(str(tiny_model_dir), dtype="bfloat16"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
    )
    with torch.no_grad():  # a delta far below bf16's rounding step of the weights
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-4)
    layer = policy.get_base_model().model.layers[0].self_attn.q_proj
    expected = layer.get_base_layer().weight.float() + layer.get_delta_weight("default")
    assert (
        layer.get_base_layer().weight + layer.get_delta_weight("default").bfloat16()
    ).float().sub(expected).abs().max() > 1e-5  # merging in bf16 would lose it
    reloaded = AutoModelForCausalLM.from_pretrained(save_policy(policy, tokenizer, tmp_path / "p"))
    assert reloaded.dtype == torch.float32
    torch.testing.assert_close(
        reloaded.model.layers[0].self_attn.q_proj.weight, expected, rtol=0, atol=1e-7
    )
