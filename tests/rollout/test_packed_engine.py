"""PackedDecoder and PackedEngine against transformers: same logits, same greedy tokens,
logprobs equal to the trainer's, on tiny random models in float32."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from lit_rl.algorithms import token_logprobs_with_entropy
from lit_rl.models import load_model, load_tokenizer, position_ids_from_mask
from lit_rl.rollout import (
    HFGenerateEngine,
    PackedEngine,
    SamplingParams,
    completion_mask_from_eos,
)
from lit_rl.rollout.decoder import (
    PackedDecoder,
    PrepackedWeight,
    apply_rope,
    prefill_mask,
    unsupported_reason,
)
from tests.conftest import sample

PROMPTS = ["ab", "a much longer prompt", "xyz?"]


def tiny_qwen2(vocab_size: int):
    torch.manual_seed(1)
    config = Qwen2Config(  # q/k/v carry biases, untied lm_head
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config)


def with_lora(model, targets):
    # Non-zero B (init_lora_weights=False), so the adapters change every output.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(2)
    return get_peft_model(model, config)


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return tokenizer, prompts.input_ids, prompts.attention_mask


def models(tiny_model_dir, vocab_size):
    llama = load_model(str(tiny_model_dir))
    yield "llama", llama
    yield "qwen2 (biases)", tiny_qwen2(vocab_size)
    yield (
        "llama + LoRA q,v,up",
        with_lora(load_model(str(tiny_model_dir)), ["q_proj", "v_proj", "up_proj"]),
    )
    yield "llama + LoRA all-linear", with_lora(load_model(str(tiny_model_dir)), "all-linear")


@pytest.mark.parametrize("prepack", [False, True], ids=["plain weights", "prepacked"])
def test_decoder_logits_match_the_model_at_every_step(tiny_model_dir, setup, prepack):
    tokenizer, ids, mask = setup
    rows, prompt_len = ids.shape
    for name, model in models(tiny_model_dir, len(tokenizer)):
        model.eval()
        decoder = PackedDecoder(model, rows=rows if prepack else None)
        # float32 on a CPU: MKL's packed GEMM (torch's CPU wheels ship MKL on x86).
        assert (decoder.layers[0].qkv.prepacked is not None) == (
            prepack and torch.backends.mkl.is_available()
        )
        new = torch.randint(
            5, len(tokenizer), (rows, 4), generator=torch.Generator().manual_seed(0)
        )
        full_ids = torch.cat([ids, new], 1)
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        positions = position_ids_from_mask(full_mask)
        with torch.no_grad():
            expected = model(
                input_ids=full_ids, attention_mask=full_mask, position_ids=positions
            ).logits
        cache = decoder.new_cache(rows, full_ids.shape[1])
        cos, signed_sin = decoder.rotary_table(full_ids.shape[1])
        valid = full_mask.bool()
        p = positions[:, :prompt_len]
        with torch.no_grad():
            got = [decoder.forward(ids, cos[p], signed_sin[p], cache, 0, prefill_mask(mask))]
            for t in range(new.shape[1]):
                end = prompt_len + t + 1
                p = positions[:, end - 1 : end]
                got.append(
                    decoder.forward(
                        new[:, t : t + 1],
                        cos[p],
                        signed_sin[p],
                        cache,
                        end - 1,
                        valid[:, None, None, :end],
                    )
                )
        got = torch.stack(got, 1)  # logits after the prompt and after each new token
        assert torch.allclose(got, expected[:, prompt_len - 1 :], atol=1e-5, rtol=1e-4), name


def generate(engine, model, setup, sampling, eos=None, num_generations=2):
    tokenizer, ids, mask = setup
    eos = [tokenizer.eos_token_id] if eos is None else eos
    return sample(engine, model, ids, mask, num_generations, sampling, tokenizer.pad_token_id, eos)


def test_greedy_tokens_equal_generate_including_eos_padding(tiny_model_dir, setup):
    tokenizer = setup[0]
    model = with_lora(load_model(str(tiny_model_dir)), ["q_proj", "v_proj"])
    greedy = SamplingParams(max_new_tokens=12, do_sample=False)
    first = generate(PackedEngine(), model, setup, greedy).completion_ids
    assert first.shape == (6, 12)
    # Make row 0's third token an EOS: that row must stop there and pad after it, as generate does.
    eos = [tokenizer.eos_token_id, int(first[0, 2])]
    ours = generate(PackedEngine(), model, setup, greedy, eos)
    reference = generate(HFGenerateEngine(), model, setup, greedy, eos)
    assert torch.equal(ours.completion_ids, reference.completion_ids)
    assert (ours.completion_ids[0, 3:] == tokenizer.pad_token_id).all()


def test_decoding_stops_when_every_row_has_ended(tiny_model_dir, setup):
    model = load_model(str(tiny_model_dir))
    greedy = SamplingParams(max_new_tokens=12, do_sample=False)
    first = generate(PackedEngine(), model, setup, greedy).completion_ids
    eos = first[:, 2].tolist()  # each row ends by its third token, some sooner
    is_eos = torch.isin(first, torch.tensor(eos))
    last_needed = int(is_eos.int().argmax(1).max()) + 1  # the latest first-EOS, 1-based
    out = generate(PackedEngine(), model, setup, greedy, eos).completion_ids
    assert out.shape == (6, last_needed) and last_needed <= 3
    assert torch.equal(out, generate(HFGenerateEngine(), model, setup, greedy, eos).completion_ids)


def test_sampled_logprobs_equal_the_trainers(tiny_model_dir, setup):
    # The trainer scores completions by a full forward pass (token_logprobs_with_entropy at the
    # sampling temperature); the engine's per-token logprobs must be the same numbers.
    tokenizer, ids, mask = setup
    model = with_lora(load_model(str(tiny_model_dir)), "all-linear")
    sampling = SamplingParams(max_new_tokens=10, temperature=0.7)
    torch.manual_seed(0)
    out = generate(PackedEngine(), model, setup, sampling, num_generations=3)
    completion = out.completion_ids
    full_ids = torch.cat([ids.repeat_interleave(3, 0), completion], 1)
    full_mask = torch.cat([mask.repeat_interleave(3, 0), torch.ones_like(completion)], 1)
    with torch.no_grad():
        logits = model(
            input_ids=full_ids,
            attention_mask=full_mask,
            position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits[:, ids.shape[1] - 1 : -1]
    expected, _ = token_logprobs_with_entropy(logits, completion, 0.7)
    ended = torch.isin(completion, torch.tensor([tokenizer.eos_token_id]))
    counted = (ended.cumsum(1) - ended.int()) == 0
    assert torch.allclose(out.logprobs[counted], expected[counted], atol=1e-5)


def test_sampling_is_seeded_and_prompt_major(tiny_model_dir, setup):
    model = load_model(str(tiny_model_dir))
    sampling = SamplingParams(max_new_tokens=8)

    def sample(seed):
        torch.manual_seed(seed)
        return generate(PackedEngine(), model, setup, sampling, num_generations=4).completion_ids

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_unsupported_models_fall_back_to_generate(setup, caplog):
    tokenizer, ids, mask = setup
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4))
    gpt2.eval()
    assert "gpt2" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="cannot run this model: model_type 'gpt2'"):
        PackedDecoder(gpt2)
    greedy = SamplingParams(max_new_tokens=5, do_sample=False)
    with caplog.at_level("INFO"):
        ours = generate(PackedEngine(), gpt2, setup, greedy, num_generations=1)
    assert "sampling with transformers generate (" in caplog.text  # the fallback, named
    # Against transformers itself: its own greedy tokens, and the logprobs of a forward pass.
    with torch.no_grad():
        expected = gpt2.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=5,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, ids.shape[1] :]
        assert torch.equal(ours.completion_ids, expected)
        full_ids = torch.cat([ids, expected], 1)
        full_mask = torch.cat([mask, torch.ones_like(expected)], 1)
        logits = gpt2(
            input_ids=full_ids,
            attention_mask=full_mask,
            position_ids=position_ids_from_mask(full_mask),
        ).logits[:, ids.shape[1] - 1 : -1]
    logprobs, _ = token_logprobs_with_entropy(logits, expected, 1.0)
    counted = completion_mask_from_eos(expected, [tokenizer.eos_token_id])
    torch.testing.assert_close(ours.logprobs[counted], logprobs[counted], rtol=0, atol=1e-5)


def test_lora_variants_are_refused(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    dora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert "variant" in unsupported_reason(dora)


def test_prepacked_bf16_products_are_the_plain_ones_bit_for_bit():
    # The engine's speed-up on CPUs with bf16 units must not change a single sampled logit.
    weight = torch.randn(96, 64, dtype=torch.bfloat16)
    prepacked = PrepackedWeight.of(weight, rows=4)
    if prepacked is None:
        pytest.skip("this CPU has no bf16 instructions for oneDNN (float32 is tested above)")
    x = torch.randn(4, 3, 64, dtype=torch.bfloat16)
    bias = torch.randn(96, dtype=torch.bfloat16)
    assert torch.equal(prepacked.linear(x, bias), F.linear(x, weight, bias))
    assert torch.equal(prepacked.linear(x[:, -1], None), F.linear(x[:, -1], weight))


def test_prepacked_float32_products_for_any_row_count():
    weight, bias = torch.randn(96, 64), torch.randn(96)
    prepacked = PrepackedWeight.of(weight, rows=4)
    if prepacked is None:
        pytest.skip("torch built without MKL")
    for rows in (4, 7, 1):  # the prefill's row count differs from the decode's
        x = torch.randn(rows, 64)
        torch.testing.assert_close(prepacked.linear(x, bias), F.linear(x, weight, bias))


def test_rope_is_transformers_rope_bit_for_bit_in_bf16():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8, dtype=torch.bfloat16)  # [N, heads, L, d]
    k = torch.randn(2, 2, 5, 8, dtype=torch.bfloat16)
    angles = torch.rand(2, 5, 4) * 10
    cos = torch.cat([angles.cos()] * 2, -1).bfloat16()
    sin = torch.cat([angles.sin()] * 2, -1).bfloat16()
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    signed_sin = torch.cat([-sin[..., :4], sin[..., 4:]], -1)
    qk = torch.cat([q, k], 1).transpose(1, 2)  # [N, L, heads, d], the decoder's layout
    got = apply_rope(qk, cos[:, :, None], signed_sin[:, :, None]).transpose(1, 2)
    assert torch.equal(got[:, :4], expected_q) and torch.equal(got[:, 4:], expected_k)
