import torch

from lit_rl.models import load_model, load_tokenizer
from lit_rl.rollout import (
    HFGenerateEngine,
    PackedEngine,
    SamplingParams,
    completion_mask_from_eos,
    default_engine,
)
from tests.conftest import sample as run_engine


def test_completion_mask_from_eos_hand_values():
    eos = 9
    ids = torch.tensor([[1, 2, 9, 9, 9], [9, 1, 1, 1, 1], [1, 2, 3, 4, 5], [1, 8, 2, 8, 3]])
    mask = completion_mask_from_eos(ids, [eos, 8])
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # through the first EOS, padding after it excluded
            [1, 0, 0, 0, 0],  # an immediate EOS still counts (the policy chose to stop)
            [1, 1, 1, 1, 1],  # no EOS: truncated at max length, every token counts
            [1, 1, 0, 0, 0],  # any of several EOS ids ends the completion
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_hf_engine_is_prompt_major_and_restores_train_mode(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).train()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = tokenizer(["ab", "a much longer prompt"], return_tensors="pt", padding=True)
    greedy = SamplingParams(max_new_tokens=5, do_sample=False)
    out = run_engine(
        HFGenerateEngine(),
        model,
        prompts.input_ids,
        prompts.attention_mask,
        3,
        greedy,
        tokenizer.pad_token_id,
        [tokenizer.eos_token_id],
    ).completion_ids
    assert out.shape[0] == 6 and out.shape[1] <= 5
    # Greedy: the 3 samples of a prompt are identical and follow that prompt (rows 0-2, 3-5).
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    single = run_engine(
        HFGenerateEngine(),
        model,
        prompts.input_ids[1:],
        prompts.attention_mask[1:],
        1,
        greedy,
        tokenizer.pad_token_id,
        [tokenizer.eos_token_id],
    ).completion_ids
    assert torch.equal(out[3, : single.shape[1]], single[0])
    assert model.training


def test_sampling_is_seeded(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompts = tokenizer(["hello"], return_tensors="pt")
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0)

    def sample(seed):
        torch.manual_seed(seed)
        return run_engine(
            HFGenerateEngine(),
            model,
            prompts.input_ids,
            prompts.attention_mask,
            4,
            sampling,
            tokenizer.pad_token_id,
            [tokenizer.eos_token_id],
        ).completion_ids

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_default_engine_is_packed_on_a_cpu_and_generate_elsewhere():
    assert isinstance(default_engine(torch.device("cpu")), PackedEngine)
    assert isinstance(default_engine(torch.device("cuda")), HFGenerateEngine)
