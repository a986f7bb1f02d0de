"""Peak memory and step time per process: one process beside FSDP2 over N processes.

    python benchmarks/scaling.py                       # one process (strategy "auto")
    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        benchmarks/scaling.py --strategy fsdp2         # two processes, each its shard

Both train GRPO on the same global batch of the embedded math prompts (each process its share
of the prompts) for ``--steps`` optimizer steps and print, per process, the peak resident
memory of each phase (building and sharding the models, rollouts, updates) and the median
update time.
Full fine-tuning by default (float32 weights, AdamW state, a frozen reference copy): what
sharding divides. CPU runs only measure memory honestly: 2 processes share this machine's cores.
"""

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from peft import LoraConfig
from torch.distributed.tensor import DTensor

from lit_rl.callbacks import RolloutCallback
from lit_rl.data import PromptDataModule
from lit_rl.modules import GRPOModule
from lit_rl.rewards import MathCorrectness
from lit_rl.strategies import FSDP2Strategy


def local_bytes(param: torch.Tensor) -> int:
    """Bytes of ``param`` this process holds (its shard under FSDP2)."""
    local = param.to_local() if isinstance(param, DTensor) else param
    return local.numel() * local.element_size()


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark since start or the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Restart the high-water mark at the current resident memory (Linux's clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


class Probe(Callback):
    """Peak resident memory of each phase: building and sharding the models (up to fit
    start), the rollout (RolloutCallback runs before this callback), and the update."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {"setup": 0.0, "rollout": 0.0, "update": 0.0}
        self.steps: list[float] = []
        self.start = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:  # noqa: ANN401
        self.peaks["setup"] = peak_rss_mib()
        reset_peak_rss()

    def on_train_batch_start(self, *args: Any) -> None:  # noqa: ANN401
        self.peaks["rollout"] = max(self.peaks["rollout"], peak_rss_mib())
        reset_peak_rss()
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:  # noqa: ANN401
        self.steps.append(time.perf_counter() - self.start)
        self.peaks["update"] = max(self.peaks["update"], peak_rss_mib())
        reset_peak_rss()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategy", choices=["auto", "fsdp2"], default="auto")
    parser.add_argument("--lora", action="store_true", help="LoRA r16 instead of full FT")
    parser.add_argument("--prompts", type=int, default=2, help="global prompts per step")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    strategy = FSDP2Strategy(mixed_precision="none") if args.strategy == "fsdp2" else "auto"
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if args.lora else None
    module = GRPOModule(
        reward=MathCorrectness(answer_field="answer"),
        lora=lora,
        dtype="float32",
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=0.7,
        learning_rate=1e-6,
    )
    probe = Probe()
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),  # torchrun's processes per node
        strategy=strategy,
        max_steps=args.steps,
        callbacks=[RolloutCallback(), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    world_size = trainer.world_size
    data = PromptDataModule(batch_size=args.prompts // world_size, num_train=64, num_val=1)
    trainer.fit(module, data)
    report = {
        "rank": trainer.global_rank,
        "world_size": world_size,
        "strategy": args.strategy,
        "full_finetuning": not args.lora,
        "parameters_here_mib": round(sum(local_bytes(p) for p in module.parameters()) / 2**20),
        **{f"peak_rss_{phase}_mib": round(peak) for phase, peak in probe.peaks.items()},
        "median_update_s": round(statistics.median(probe.steps[1:] or probe.steps), 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
