"""``make bench``: lit_rl and TRL's GRPOTrainer side by side, in one run, on one workload.

Workload (both frameworks): the embedded SmolLM2-135M-Instruct, LoRA r16 on q,k,v,o, 1 prompt x
4 generations x <= 32 new tokens at temperature 1, beta 0.04, loss "grpo", the embedded math
prompts and the same correctness reward, the dtype ``auto`` picks on this machine. lit_rl is
timed through its real training step (GRPOModule under a Lightning Trainer with the
RolloutCallback), TRL through ``GRPOTrainer.train``. Each measurement runs in its own process,
so peak RSS is that process's alone.

Printed: the hardware and this CPU's floor (matmul FLOP/s in the chosen dtype, memory copy
bandwidth), per-phase step times (median after warm-up) with each phase's share of its floor,
generated tokens/s beside a bare ``generate`` loop on the same batch, peak RSS, the lit_rl/TRL
ratios, and lit_rl's scaling with num_generations and completion length.

    make bench                          # everything (installs TRL into .venv on first use)
    make bench ARGS="--skip-trl"        # lit_rl only
    make bench ARGS="--steps 5"
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lit_rl.models.dtype import FAST_BF16_CPU_FLAGS, cpu_flags, resolve_dtype

SUFFIX = " Give the final answer as 'Answer: <number>'."
# Settings both frameworks take under the same names, so their workloads cannot drift apart.
SHARED = dict(temperature=1.0, beta=0.04, loss_type="grpo", learning_rate=1e-5)
LORA = dict(
    r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mib() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def synchronized_clock() -> float:
    """``perf_counter`` after the GPU's queued work is done (CUDA runs asynchronously)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


# ---- this CPU's floor ---------------------------------------------------------------------


def matmul_flops(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a [512, 576] x [576, 1536] matmul (SmolLM2-135M's MLP shape) in ``dtype``."""
    a, b = torch.randn(512, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 512 * 576 * 1536 * count / (time.perf_counter() - start)


def copy_bandwidth(seconds: float = 1.0) -> float:
    """Bytes/s read + written by copying a 256 MiB buffer."""
    src = torch.ones(64 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        count += 1
    return 2 * src.numel() * 4 * count / (time.perf_counter() - start)


# ---- the workloads, each in its own process ----------------------------------------------


def run_lit_rl(args: argparse.Namespace) -> dict[str, Any]:
    """GRPOModule's own training step under a Trainer; phases from the pipeline's timers and
    Lightning hooks around the optimizer step."""
    from lightning.pytorch import Callback, Trainer
    from peft import LoraConfig

    from lit_rl.callbacks import RolloutCallback
    from lit_rl.data import PromptDataModule
    from lit_rl.evaluation import EvaluationPlan
    from lit_rl.modules import GRPOModule
    from lit_rl.rewards import MathCorrectness
    from lit_rl.rollout import HFGenerateEngine, PackedEngine

    class PhaseTimer(Callback):
        def __init__(self) -> None:
            self.steps: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            self.start = synchronized_clock()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            self.before_optimizer = synchronized_clock()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            end = synchronized_clock()
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            rollout_end = self.start + metrics["rollout/total_time"]
            self.steps.append(
                {
                    "generation": metrics["rollout/generation_time"],
                    "reward": metrics["rollout/reward_time"],
                    "reference/old logprobs": metrics["rollout/logprobs_time"],
                    "forward+backward": self.before_optimizer - rollout_end,
                    "optimizer": end - self.before_optimizer,
                    "step": end - self.start,
                    "tokens": metrics["rollout/completion_len"] * args.num_generations,
                }
            )

    torch.manual_seed(0)
    module = GRPOModule(
        reward=MathCorrectness(),
        model=args.model,
        dtype=args.dtype,
        lora=LoraConfig(**LORA),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        **SHARED,
        activation_checkpointing=args.activation_checkpointing,
        engine={
            "default": None,
            "packed": PackedEngine(),
            "packed-plain": PackedEngine(prepack="none"),
            "generate": HFGenerateEngine(),
        }[args.engine],
        evaluation=EvaluationPlan(num_samples=0),
    )
    data = PromptDataModule(
        tokenizer=args.model, batch_size=1, num_train=64, num_val=0, prompt_suffix=SUFFIX
    )
    timer = PhaseTimer()
    trainer = Trainer(
        max_steps=args.warmup + args.steps,
        callbacks=[timer, RolloutCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    timed = timer.steps[args.warmup :]
    result = {name: statistics.median(s[name] for s in timed) for name in timed[0]}
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    result["bare_generate_tokens_per_s"] = bare_generate(module, batch, args)
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_gpu_mib"] = peak_gpu_mib()
    result["prompt_tokens"] = batch["input_ids"].shape[1]
    result["params"] = sum(p.numel() for p in module.policy.parameters())
    result["dtype"] = str(next(module.policy.parameters()).dtype).removeprefix("torch.")
    return result


def bare_generate(module: Any, batch: dict[str, Any], args: argparse.Namespace) -> float:  # noqa: ANN401
    """Generated tokens/s of plain ``generate`` on the policy for the same batch (median of 3)."""
    from lit_rl.rollout import completion_mask_from_eos

    rates = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            output = module.policy.generate(
                input_ids=batch["input_ids"].repeat_interleave(args.num_generations, 0),
                attention_mask=batch["attention_mask"].repeat_interleave(args.num_generations, 0),
                max_new_tokens=args.max_completion_length,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                pad_token_id=module.tokenizer.pad_token_id,
                eos_token_id=list(module.sampler.eos_token_ids),
            )
        seconds = time.perf_counter() - start
        completion = output[:, batch["input_ids"].shape[1] :]
        mask = completion_mask_from_eos(completion, module.sampler.eos_token_ids)
        rates.append(float(mask.sum()) / seconds)
    return statistics.median(rates)


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same model, LoRA, prompts, reward and sampling."""
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lit_rl.data.math_problems import generate_problems
    from lit_rl.models import load_model, load_tokenizer
    from lit_rl.rewards import MathCorrectness

    correctness = MathCorrectness()

    def correctness_reward(prompts, completions, answer, **kwargs) -> list[float]:  # noqa: ANN001, ANN003
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return correctness(["" for _ in texts], texts, {"answer": list(answer)}).total.tolist()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            self.seconds.append(time.perf_counter() - self.start)

    rows = [
        {"prompt": [{"role": "user", "content": row["question"] + SUFFIX}], "answer": row["answer"]}
        for row in generate_problems(64, seed=0)
    ]
    dtype = resolve_dtype(args.dtype).name
    model = load_model(args.model, dtype=dtype)
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "left"
    timer = StepTimer()
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        **SHARED,
        max_steps=args.warmup + args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # the weights are already in the chosen dtype, as lit_rl's
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
        callbacks=[timer],
    )
    trainer.train()
    lengths = [
        entry["completions/mean_length"]
        for entry in trainer.state.log_history
        if "completions/mean_length" in entry
    ]
    return {
        "step": statistics.median(timer.seconds[args.warmup :]),
        "tokens": statistics.median(lengths[args.warmup :]) * args.num_generations,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": peak_gpu_mib(),
        "dtype": dtype,
    }


def in_subprocess(framework: str, args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:  # noqa: ANN401
    settings = {**vars(args), **overrides}
    command = [sys.executable, __file__, "--worker", framework]
    keys = (
        "model",
        "dtype",
        "engine",
        "num_generations",
        "max_completion_length",
        "steps",
        "warmup",
    )
    for key in keys:
        command += [f"--{key.replace('_', '-')}", str(settings[key])]
    if settings["activation_checkpointing"]:
        command.append("--activation-checkpointing")
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{framework} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the report ----------------------------------------------------------------------------


def default_is_packed() -> bool:
    """Whether ``default_engine`` is ``PackedEngine`` on the device the bench trains on."""
    from lit_rl.rollout import PackedEngine, default_engine

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return isinstance(default_engine(device), PackedEngine)


def report(args: argparse.Namespace) -> None:
    dtype = resolve_dtype(args.dtype)
    flags = cpu_flags()
    fast = [f for f in FAST_BF16_CPU_FLAGS if f in flags] or ["none"]
    simd = [f for f in ("avx2", "avx512f") if f in flags]
    on_gpu = torch.cuda.is_available()  # both frameworks then train there
    flops = matmul_flops(dtype.torch_dtype)
    bandwidth = copy_bandwidth()
    print(f"## make bench, {time.strftime('%Y-%m-%d')}\n")
    if on_gpu:
        print(f"- GPU: {torch.cuda.get_device_name()} (both frameworks train on it; no floors)")
    print(
        f"- CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; SIMD: {' '.join(simd)}; bf16 units: {' '.join(fast)}"
    )
    print(f"- torch {torch.__version__}; dtype: {dtype.name} ({dtype.reason})")
    if not on_gpu:
        print(
            f"- floor: {flops / 1e9:.0f} GFLOP/s {dtype.name} matmul (512x576x1536), {bandwidth / 1e9:.1f} GB/s memory copy"
        )
    print(
        f"- workload: {args.model} model, LoRA r16 q,k,v,o, 1 prompt x {args.num_generations} "
        f"generations x <= {args.max_completion_length} tokens, T=1.0, beta 0.04, loss grpo; "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    ours = in_subprocess("lit_rl", args)
    checkpointed = in_subprocess("lit_rl", args, activation_checkpointing=True)
    # The rollout engine that is not the default, timed beside it.
    other_name, other_engine = (
        ("transformers generate", "generate") if default_is_packed() else ("PackedEngine", "packed")
    )
    other = in_subprocess("lit_rl", args, engine=other_engine)
    # The prepacked weights' transient copy sets the peak once checkpointing lowers the
    # update's: checkpointing with the plain-weight packed engine shows the leanest setting.
    lean = in_subprocess("lit_rl", args, activation_checkpointing=True, engine="packed-plain")
    theirs = None if args.skip_trl else in_subprocess("trl", args)

    # What each phase would take at the floor: decoding reads every weight once per token
    # step; a training forward + backward with frozen base weights is ~4 x params x tokens.
    # Generation: T token steps, each reading every weight once (bandwidth-bound at G = 4).
    # Reference logprobs: one forward, ~2 x params x tokens FLOPs (mu = 1: no pi_old pass).
    # Forward + backward with frozen base weights: ~4 x params x tokens (no weight gradients).
    params = ours["params"]
    bytes_per_weight = torch.finfo(dtype.torch_dtype).bits / 8
    steps_decoded = ours["tokens"] / args.num_generations  # mean completion length
    decode_floor = steps_decoded * params * bytes_per_weight / bandwidth
    tokens = args.num_generations * (ours["prompt_tokens"] + steps_decoded)
    update_floor = 4 * params * tokens / flops
    logprob_floor = 2 * params * tokens / flops
    floors = {
        "generation": decode_floor,
        "reference/old logprobs": logprob_floor,
        "forward+backward": update_floor,
    }
    if on_gpu:  # the floors above are this CPU's
        floors = {}

    print("| phase | lit_rl s | floor s | lit_rl / floor |")
    print("|---|---|---|---|")
    for phase in (
        "generation",
        "reward",
        "reference/old logprobs",
        "forward+backward",
        "optimizer",
        "step",
    ):
        floor = floors.get(phase)
        share = f"{ours[phase] / floor:.1f}x" if floor else ""
        print(f"| {phase} | {ours[phase]:.2f} | {f'{floor:.2f}' if floor else ''} | {share} |")
    in_loop = ours["tokens"] / ours["generation"]
    default_name = "PackedEngine" if default_is_packed() else "transformers generate"
    print(
        f"\ngenerated tokens/s: in the loop ({default_name}, the default) {in_loop:.0f}, "
        "bare `generate` on the same batch "
        f"{ours['bare_generate_tokens_per_s']:.0f} ({in_loop / ours['bare_generate_tokens_per_s']:.2f}x); "
        f"with {other_name} {other['tokens'] / other['generation']:.0f} "
        f"(generation {other['generation']:.2f} s of its {other['step']:.2f} s step)"
    )
    print("\n| | lit_rl | TRL 1.16 | lit_rl / TRL |")
    print("|---|---|---|---|")
    rows = [
        ("step s", "step", ours, ".2f"),
        ("peak RSS MiB", "peak_rss_mib", ours, ".0f"),
        (f"step s, lit_rl with {other_name}", "step", other, ".2f"),
        (f"peak RSS MiB, lit_rl with {other_name}", "peak_rss_mib", other, ".0f"),
        ("step s, lit_rl with activation_checkpointing", "step", checkpointed, ".2f"),
        ("peak RSS MiB, lit_rl with activation_checkpointing", "peak_rss_mib", checkpointed, ".0f"),
        ("step s, + PackedEngine(prepack=none)", "step", lean, ".2f"),
        ("peak RSS MiB, + PackedEngine(prepack=none)", "peak_rss_mib", lean, ".0f"),
        ("tokens per step", "tokens", ours, ".0f"),
    ]
    if on_gpu:
        rows.insert(2, ("peak GPU memory MiB", "peak_gpu_mib", ours, ".0f"))
    for label, key, lit_rl, spec in rows:
        if theirs is None:
            print(f"| {label} | {lit_rl[key]:{spec}} | skipped | |")
            continue
        ratio = "" if key == "tokens" else f"{lit_rl[key] / theirs[key]:.2f}"
        print(f"| {label} | {lit_rl[key]:{spec}} | {theirs[key]:{spec}} | {ratio} |")

    if args.scaling:
        print("\nlit_rl step time (s) by num_generations (T=32) and completion length (G=4):\n")
        print("| G \\ T | " + " | ".join(str(t) for t in (32, 64, 128)) + " |")
        print("|---|---|---|---|")
        by_g = {
            g: in_subprocess("lit_rl", args, num_generations=g, max_completion_length=32)["step"]
            for g in (4, 8, 16)
        }
        by_t = {
            t: in_subprocess("lit_rl", args, num_generations=4, max_completion_length=t)["step"]
            for t in (64, 128)
        }
        print(f"| 4 | {by_g[4]:.2f} | {by_t[64]:.2f} | {by_t[128]:.2f} |")
        print(f"| 8 | {by_g[8]:.2f} | | |")
        print(f"| 16 | {by_g[16]:.2f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="embedded", help="for both frameworks: embedded, a directory, a hub id"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--engine",
        default="default",
        choices=["default", "packed", "packed-plain", "generate"],
        help="lit_rl worker only",
    )
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="lit_rl worker only"
    )
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--worker", choices=["lit_rl", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "lit_rl":
        print(json.dumps(run_lit_rl(args)))
    elif args.worker == "trl":
        print(json.dumps(run_trl(args)))
    else:
        report(args)


if __name__ == "__main__":
    main()
