"""The default recipe with each rollout engine, side by side in one run on this machine: per
step the rollout's tokens/s, the step time and the engine-trainer mismatch, and each run's
peak RSS; float32 and bf16. Run it with an environment that has vLLM (``make test-vllm``
builds one), or pass ``--engines packed`` alone (engines: packed, hf, vllm, vllm-merged, and
server: a vLLM server process beside the trainer, whose peak RSS is reported beside the
trainer's; ``-ahead``: sampling the next batch during the update, ``max_staleness`` 1):

    .venv-vllm/bin/python benchmarks/engines_in_training.py --steps 8 --out engines.json

Each run is ``lit-rl fit`` in its own process (the embedded model, LoRA, the recipe's
settings, no evaluation); the first step, which loads the engine, is left out of the medians.
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from lit_rl.rollout import VLLMServerEngine

ROOT = Path(__file__).parents[1]
# The engine arguments of each name: vLLM serves a LoRA policy as an adapter, or its merged
# weights (reloaded every step) with "vllm-merged".
VLLM = "--model.init_args.engine=lit_rl.rollout.VLLMEngine"
ENGINES = {
    "packed": ["--model.init_args.engine=lit_rl.rollout.PackedEngine"],
    # The packed decoder sampling the next batch on a thread, from its copy of the weights.
    "packed-ahead": [
        "--model.init_args.engine=lit_rl.rollout.PackedEngine",
        '--model.init_args.sampler_correction={"mode": "token_tis"}',
    ],
    "hf": ["--model.init_args.engine=lit_rl.rollout.HFGenerateEngine"],
    "hf-ahead": [
        "--model.init_args.engine=lit_rl.rollout.HFGenerateEngine",
        '--model.init_args.sampler_correction={"mode": "token_tis"}',
    ],
    "vllm": [VLLM],
    "vllm-merged": [VLLM, "--model.init_args.engine.lora_as_adapter=false"],
    # A vLLM server process beside the trainer, launched by the run (this interpreter's vLLM).
    "server": [
        "--model.init_args.engine=lit_rl.rollout.VLLMServerEngine",
        f'--model.init_args.engine.launch={{"python": "{sys.executable}"}}',
    ],
    # The server sampling the next batch while the trainer updates (RolloutCallback's
    # max_staleness 1, ROLLOUT_ARGS) and TIS for the one update of drift.
    "server-ahead": [
        "--model.init_args.engine=lit_rl.rollout.VLLMServerEngine",
        f'--model.init_args.engine.launch={{"python": "{sys.executable}"}}',
        '--model.init_args.sampler_correction={"mode": "token_tis"}',
    ],
    # The same with every core for vLLM (it keeps one for its front end by default).
    "server-all-cores": [
        "--model.init_args.engine=lit_rl.rollout.VLLMServerEngine",
        f'--model.init_args.engine.launch={{"python": "{sys.executable}", '
        '"environment": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}',
    ],
}


# RolloutCallback's arguments by engine name (the others: the synchronous default).
AHEAD = ["--trainer.callbacks.max_staleness=1"]
ROLLOUT_ARGS = {name: AHEAD for name in ENGINES if name.endswith("-ahead")}


class StepTimes(Callback):
    """Appends each step's timings, tokens and mismatch, then the peak RSS, to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.handoff.trained is None:  # rollouts ahead: the first batch only submits
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        tokens = m["rollout/completion_len"] * len(pl_module.handoff.trained.experience)
        row = {
            "step_s": m["train/step_time"],
            "generation_s": m["rollout/generation_time"],
            "tokens": tokens,
            "tokens_per_s": tokens / m["rollout/generation_time"],
            "k3": m["rollout/logprob_mismatch_k3"],
            "staleness": m["rollout/staleness"],
        }
        with self.path.open("a") as file:
            file.write(json.dumps(row) + "\n")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        engine = pl_module.sampler.engine
        servers = engine.launched if isinstance(engine, VLLMServerEngine) else []
        server_peak = sum(group_peak_rss_mib(server.process.pid) for server in servers)
        with self.path.open("a") as file:
            file.write(
                json.dumps({"peak_rss_mib": peak, "server_peak_rss_mib": server_peak}) + "\n"
            )


def group_peak_rss_mib(group: int) -> float:
    """The peak RSS (VmHWM) of every process of a process group, summed: a vLLM server and
    its engine processes."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            status = (stat.parent / "status").read_text().splitlines()
        except (OSError, IndexError):
            continue
        total += sum(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))
    return total


def run(
    engine: str,
    dtype: str,
    steps: int,
    folder: Path,
    model: str = "embedded",
    config: str = "recipes/grpo_math.yaml",
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``config`` with ``engine`` and ``dtype`` on ``model`` for ``steps`` steps (``extra``: more
    overrides): the medians of its steps after the first, and its peak RSS."""
    out = folder / f"{engine}-{dtype}-{Path(config).stem}.jsonl"
    command = [
        sys.executable, "-m", "lit_rl.cli", "fit", "--config", config,
        *ENGINES[engine], f"--model.init_args.dtype={dtype}", f"--model.init_args.model={model}",
        f"--trainer.max_steps={steps}", "--trainer.val_check_interval=100000",
        "--trainer.callbacks=[]",  # the recipe's evaluation, samples and checkpoints off
        "--trainer.callbacks+=lit_rl.callbacks.RolloutCallback", *ROLLOUT_ARGS.get(engine, []),
        "--trainer.callbacks+=benchmarks.engines_in_training.StepTimes",
        f"--trainer.callbacks.path={out}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--data.init_args.num_val=0", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} {dtype} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    timed = [r for r in rows if "step_s" in r][1:]
    summary = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    summary["k3_max"] = max(r["k3"] for r in timed)
    return summary | rows[-1] | {"steps": len(timed)}


def cpu() -> str:
    """The CPU's model name and the bf16 matmul support that decides bf16 speed here."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    flags = [f for f in ("amx_bf16", "avx512_bf16") if f in info.split()]
    return f"{names[0] if names else platform.machine()} ({', '.join(flags) or 'no bf16 matmul'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="packed,vllm")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for dtype in args.dtypes.split(","):
            for engine in args.engines.split(","):  # one after the other, alone on the machine
                results[f"{engine} {dtype}"] = run(engine, dtype, args.steps, Path(folder))
    print(f"## default recipe per engine, {cpu()}, {args.steps - 1} timed steps each")
    print(
        "| engine, dtype | step s | generation s | tokens/s | k3 (median / max) "
        "| peak RSS MiB (trainer / server) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        server = f" / {r['server_peak_rss_mib']:.0f}" if r["server_peak_rss_mib"] else ""
        # Sampled ahead, the generation overlaps the update: the trainer's wait is shown.
        ahead = r["staleness"] > 0
        generation = f"{r['generation_s']:.2f}" + (" (wait)" if ahead else "")
        tokens_per_s = "-" if ahead else f"{r['tokens_per_s']:.0f}"
        print(
            f"| {name} | {r['step_s']:.2f} | {generation} | {tokens_per_s} "
            f"| {r['k3']:.2g} / {r['k3_max']:.2g} | {r['peak_rss_mib']:.0f}{server} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
