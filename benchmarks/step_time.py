"""GRPO step-time breakdown on this machine: generation, reference logprobs, policy update.

Workload (defaults = the grpo_math recipe): embedded SmolLM2-135M-Instruct, dtype auto, LoRA
r16 on all linear layers, 2 prompts x 8 generations x 64 new tokens, beta 0.04. Prints the
hardware, per-phase seconds (median of --steps after --warmup), generated tokens/s and peak RSS.

    make bench                      # defaults
    make bench ARGS="--steps 5 --dtype float32"
"""

import argparse
import platform
import resource
import statistics
import time

import torch
from peft import LoraConfig

from lit_rl.algorithms import grpo_loss
from lit_rl.data import PromptDataModule
from lit_rl.experience import make_experience
from lit_rl.modules import GRPOModule
from lit_rl.rewards import MathCorrectness
from lit_rl.rollout import HFGenerateEngine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


class TimedEngine(HFGenerateEngine):
    """The default engine, remembering how long its last ``generate`` took."""

    seconds = 0.0

    def generate(self, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
        start = time.perf_counter()
        completions = super().generate(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        self.tokens = int(completions.numel())
        return completions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    module = GRPOModule(
        reward=MathCorrectness(),
        model=args.model,
        dtype=args.dtype,
        lora=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
    )
    module.log = lambda *a, **k: None  # no trainer here: time the phases, not the logger
    optimizer = torch.optim.AdamW(
        [p for p in module.policy.parameters() if p.requires_grad], lr=1e-5
    )
    data = PromptDataModule(
        tokenizer=args.model,
        batch_size=args.prompts,
        num_train=64,
        num_val=1,
        prompt_suffix=" Give the final answer as 'Answer: <number>'.",
    )
    data.setup("fit")
    engine = TimedEngine()
    phases: dict[str, list[float]] = {
        "generate": [],
        "score+reference": [],
        "update": [],
        "step": [],
    }
    tokens = []
    for index, batch in enumerate(data.train_dataloader()):
        if index == args.warmup + args.steps:
            break
        start = time.perf_counter()
        rollout, _ = make_experience(module, engine, batch, f"batch {index}")
        rolled = time.perf_counter()
        logprobs, _ = module.policy_logprobs(rollout, with_entropy=True)
        loss, _ = grpo_loss(
            logprobs,
            logprobs.detach(),
            rollout.ref_logprobs,
            rollout.advantages,
            rollout.completion_mask,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        if index >= args.warmup:
            phases["generate"].append(engine.seconds)
            phases["score+reference"].append(rolled - start - engine.seconds)
            phases["update"].append(done - rolled)
            phases["step"].append(done - start)
            tokens.append(engine.tokens)
    print(
        f"hardware: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"workload: {args.model} {args.dtype}, LoRA r16 all-linear, {args.prompts} prompts x "
        f"{args.num_generations} generations x <= {args.max_completion_length} tokens"
    )
    for name, values in phases.items():
        print(f"{name:>10}: {statistics.median(values):6.2f} s (median of {len(values)})")
    rate = statistics.median(tokens) / statistics.median(phases["generate"])
    print(f"generation: {rate:.0f} tokens/s (N x T positions, padding after EOS included)")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
