"""Rollout engines side by side: ``PackedEngine`` vs transformers ``generate``, one process.

For each workload (prompts x generations x new tokens) on the policy (LoRA by default):
seconds per generation and generated tokens/s of both engines (median of ``--repeats``,
alternating, each after one warm-up), and two checks of the packed engine: its per-token
logprobs against the trainer's full forward pass (max and mean absolute difference over
completion tokens; bf16 noise only, shown beside the same gap for ``generate``'s own
logits), and its greedy tokens against ``generate``'s (identical in
float32; in bf16 the two may part ways after a near-tie).

    python benchmarks/engine.py                                   # embedded model, this CPU
    python benchmarks/engine.py --model DIR --random-init --device cuda   # weights not at hand
"""

import argparse
import statistics
import time

import torch
from peft import LoraConfig

from lit_rl.algorithms import token_logprobs_with_entropy
from lit_rl.data.math_problems import generate_problems
from lit_rl.models import apply_lora, load_model, load_tokenizer, resolve_dtype
from lit_rl.rollout import (
    Generation,
    GenerationRequest,
    HFGenerateEngine,
    PackedEngine,
    SamplingParams,
)

SUFFIX = " Give the final answer as 'Answer: <number>'."


def build_policy(args: argparse.Namespace) -> torch.nn.Module:
    dtype = resolve_dtype(args.dtype)
    if args.random_init:  # the model's shape and config, random weights (timing only)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(args.model)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype.torch_dtype)
    else:
        model = load_model(args.model, dtype=dtype.name)
    targets = "all-linear" if args.lora == "all-linear" else args.lora.split(",")
    # init_lora_weights=False: non-zero adapters, so the check covers the LoRA path.
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    return apply_lora(model, lora).to(args.device).eval()


def prompts(tokenizer, count: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row["question"] + SUFFIX}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for row in generate_problems(count, seed=0)
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return batch.input_ids.to(device), batch.attention_mask.to(device)


def run(engine, policy, ids, mask, g, sampling, tokenizer, eos) -> Generation:  # noqa: ANN001
    """One generation by ``engine`` with ``policy``'s weights."""
    if engine.weights_version != 0:
        engine.setup(policy, sampling)
        engine.sync_weights(policy, 0)
    request = GenerationRequest(ids, mask, g, sampling, tokenizer.pad_token_id, tuple(eos))
    return engine.generate(request)


def timed(engine, policy, ids, mask, g, sampling, tokenizer, eos, seed):  # noqa: ANN001, ANN201
    torch.manual_seed(seed)
    if ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run(engine, policy, ids, mask, g, sampling, tokenizer, eos)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def logprob_gap(policy, ids, mask, out, g, temperature, eos) -> tuple[float, float]:  # noqa: ANN001
    """Max and mean |engine logprob - trainer logprob| over completion tokens."""
    completion = out.completion_ids
    full = torch.cat([ids.repeat_interleave(g, 0), completion], 1)
    full_mask = torch.cat([mask.repeat_interleave(g, 0), torch.ones_like(completion)], 1)
    with torch.no_grad():
        logits = policy(
            input_ids=full,
            attention_mask=full_mask,
            position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=completion.shape[1] + 1,
        ).logits[:, :-1]
    trainer, _ = token_logprobs_with_entropy(logits, completion, temperature)
    ended = torch.isin(completion, torch.tensor(eos, device=completion.device))
    counted = (ended.cumsum(1) - ended.int()) == 0
    gap = (out.logprobs - trainer).abs()[counted]
    return float(gap.max()), float(gap.mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--lora", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--workloads", default="1x4x32,2x8x64", help="prompts x G x tokens")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    policy = build_policy(args)
    eos = [tokenizer.eos_token_id]
    dtype = next(policy.parameters()).dtype
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"## engines on {name}, {str(dtype).removeprefix('torch.')}, LoRA {args.lora}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print(
        "| prompts x G x T | generate s | packed s | speed-up | tokens/s generate | "
        "tokens/s packed | logprob gap max / mean: packed | generate | greedy tokens equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for workload in args.workloads.split(","):
        b, g, t = (int(x) for x in workload.split("x"))
        ids, mask = prompts(tokenizer, b, args.device)
        sampling = SamplingParams(max_new_tokens=t, temperature=args.temperature)
        # Timed with a stop token that (almost) never comes up, so both decode T steps.
        eos_never = [len(tokenizer) - 1]
        seconds: dict[str, list[float]] = {"generate": [], "packed": []}
        engines = {"generate": HFGenerateEngine(), "packed": PackedEngine()}
        for repeat in range(args.repeats + 1):
            for label, engine in engines.items():
                out, s = timed(engine, policy, ids, mask, g, sampling, tokenizer, eos_never, repeat)
                if repeat > 0:
                    seconds[label].append(s)
        tokens = b * g * t
        gen, packed = (statistics.median(seconds[k]) for k in ("generate", "packed"))
        gaps = {}
        for label, engine in engines.items():  # each engine's own logprobs of its samples
            torch.manual_seed(0)
            sampled = run(engine, policy, ids, mask, g, sampling, tokenizer, eos)
            gaps[label] = logprob_gap(policy, ids, mask, sampled, g, args.temperature, eos)
        (gap_max, gap_mean), (ref_max, ref_mean) = gaps["packed"], gaps["generate"]
        greedy = SamplingParams(max_new_tokens=t, do_sample=False)
        same = [
            run(engines[k], policy, ids, mask, 1, greedy, tokenizer, eos)
            for k in ("generate", "packed")
        ]
        width = min(x.completion_ids.shape[1] for x in same)
        equal = (same[0].completion_ids[:, :width] == same[1].completion_ids[:, :width]).float()
        print(
            f"| {workload} | {gen:.2f} | {packed:.2f} | {gen / packed:.2f}x | {tokens / gen:.0f} | "
            f"{tokens / packed:.0f} | {gap_max:.2e} / {gap_mean:.2e} | {ref_max:.2e} / {ref_mean:.2e} "
            f"| {equal.mean():.0%} |"
        )


if __name__ == "__main__":
    main()
